"""Each notebook's `SMOKE = True` quick check on real data (../shared/her2st), timed.

The quick check promises about a minute per notebook once the caches exist. This runs every
notebook (05 once per recipe: ridge, retrieval, finetune) headless with papermill, as a user
would after setting only `SMOKE = True`, `DATA_DIR` and — offline — `PRETRAINED` to the shared
lite0 weight file. Each notebook runs twice: the first pass fills the caches (decoded images,
frozen features) and is reported as "cold"; the second, with the same parameters and
`OVERWRITE = True` where the notebook has it (so no finished run is skipped), is the warm time
the one-minute promise is about. Wall seconds include the kernel start (a few seconds); the
kernel's CPU seconds (user + system) are less sensitive to other jobs on a shared machine.

    .venv/bin/python -m benchmarks.smoke_times [--passes 2] [--only 05_train.finetune ...]

Caches go to `$KIT_CACHE_DIR` (set it to a folder of your own), outputs under `runs/smoke/`.
On a machine shared with other jobs, note the load average beside each row, and run it once
more with `OMP_NUM_THREADS=1`: torch's default of one intra-op thread per core makes the
threads wait on each other when other jobs hold the cores (5-7x slower fine-tuning seen at load
15 on 2 cores), which says nothing about an idle 2-core runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from utils.dev.pipeline import execute_notebook
from utils.places import kit_root

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
RUNS = "runs/smoke_bench"  # SMOKE moves it to runs/smoke/smoke_bench


def checks() -> dict[str, tuple[str, dict]]:
    """label → (notebook, parameters): the defaults, plus what an offline her2st user sets."""
    data = {"DATA_DIR": str(HER2ST), "SMOKE": True}
    lite0 = {**data, "PRETRAINED": str(WEIGHTS), "OVERWRITE": True}
    runs = {r: f"{RUNS}/{r}_effnet_lite0" for r in ("ridge", "retrieval", "finetune")}
    genes = f"{RUNS}/genes/gene_groups.csv"
    return {
        "01_eda": ("01_eda", {**data, "RUN_DIR": f"{RUNS}/eda"}),
        "02_gene_clustering": ("02_gene_clustering", {**data, "RUN_DIR": f"{RUNS}/genes"}),
        "03_augmentation_screening": ("03_augmentation_screening",
                                      {**data, "RUN_DIR": f"{RUNS}/augment"}),
        "04_adapt": ("04_adapt", {**lite0, "RUN_DIR": f"{RUNS}/adapt"}),
        **{f"05_train.{r}": ("05_train", {**lite0, "RUN_DIR": path, "RECIPE": r,
                                         "GENE_GROUPS": genes})
           for r, path in runs.items()},
        "06_gradcam": ("06_gradcam", {**data, "RUN_DIR": runs["finetune"], "GENE_GROUPS": genes}),
        "07_ensemble_submit": ("07_ensemble_submit",
                               {**data, "RUNS": list(runs.values()), "GENE_GROUPS": genes,
                                "SUBMISSION": "submissions/smoke_bench.csv"}),
    }


def cell_seconds(executed: Path) -> float:
    """Seconds papermill recorded for the notebook's cells (without the kernel start)."""
    cells = json.loads(executed.read_text())["cells"]
    return sum(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0 for c in cells)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children (the kernels)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_check(notebook: str, params: dict, out: Path) -> tuple[float, float, float]:
    """Run one notebook; (wall seconds, seconds in its cells, CPU seconds of its kernel)."""
    start, cpu = time.perf_counter(), children_cpu()
    execute_notebook(kit_root() / "notebooks" / f"{notebook}.ipynb", params, out)
    return time.perf_counter() - start, cell_seconds(out), children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2, help="runs per notebook (1: cold only)")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all, in order)")
    parser.add_argument("--out", default="runs/smoke_bench_executed", help="executed notebooks")
    args = parser.parse_args()
    if not HER2ST.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"{HER2ST} or {WEIGHTS} is absent: this benchmark needs ../shared")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    todo = {k: v for k, v in checks().items() if not args.only or k in args.only}
    print(f"KIT_CACHE_DIR={os.environ.get('KIT_CACHE_DIR', '(kit cache/)')}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
          flush=True)
    print("| notebook | pass | wall s | cells s | kernel CPU s | load avg |\n"
          "|---|---|---|---|---|---|", flush=True)
    for label, (notebook, params) in todo.items():
        for i in range(args.passes):
            wall, cells, cpu = time_check(notebook, params,
                                          kit_root() / args.out / f"{label}.{i}.ipynb")
            kind = "cold" if i == 0 else "warm"
            print(f"| {label} | {kind} | {wall:.1f} | {cells:.1f} | {cpu:.1f} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
