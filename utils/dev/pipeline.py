"""Run the numbered notebooks headless with papermill, in order: `make demo` and smoke tests.

    python -m utils.dev.pipeline demo            # demo set → every notebook → submissions/demo.csv
    python -m utils.dev.pipeline demo --quick    # the same with the tiniest settings (CI)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from utils.dev.demo import write_demo
from utils.places import kit_root, resolve

DEMO_DATA = "data/demo"
DEMO_RUNS = "runs/demo"
DEMO_SUBMISSION = "submissions/demo.csv"
# A tiny timm model at 64 px: the demo runs in minutes on a laptop CPU, with no download.
DEMO_MODEL = {"BACKBONE": "test_convnext", "PRETRAINED": False, "IMG_SIZE": 64}
# Fine-tuning that tiny random-init model: a few epochs (one with --quick), seconds per fold.
DEMO_FINETUNE = {"EPOCHS": 4, "BATCH_SIZE": 32, "LR": 5e-4, "PATIENCE": None}
# Self-supervised adaptation of that model: two short epochs (one with --quick).
DEMO_ADAPT = {"EPOCHS": 2, "BATCH_SIZE": 16, "STEPS_PER_EPOCH": 4, "N_PROBE": 64}


def list_notebooks() -> list[Path]:
    """The kit's numbered notebooks, in pipeline order."""
    return sorted((kit_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# The tiniest settings that still train on every demo row (CI's notebook tier): fewer genes in
# heatmaps, coarse colour statistics, a short UMAP, 8 screened patches, one epoch, no TTA, a
# few CAMs. SMOKE = True (the users' quick check) instead runs on a subset of the rows.
QUICK = {"01_eda": {"N_HEATMAP_GENES": 30, "IMAGE_STRIDE": 8},
         "02_gene_clustering": {"K_RANGE": [4, 7], "UMAP_EPOCHS": 50},
         "03_augmentation_screening": {"N_PATCHES": 8},
         "04_adapt": {"EPOCHS": 1, "STEPS_PER_EPOCH": 2, "N_PROBE": 32},
         "05_train": {"TTA": False, "EPOCHS": 1},
         "06_gradcam": {"N_PATCHES": 4, "N_SHOW": 2, "GENES_PER_GROUP": 2,
                        "N_PERMUTATIONS": 100}}


def demo_parameters(data_dir: str = DEMO_DATA, runs_root: str = DEMO_RUNS,
                    submission: str = DEMO_SUBMISSION, quick: bool = False,
                    smoke: bool = False) -> dict[str, dict | list[dict]]:
    """Parameters of each notebook for a run on the demo set (papermill overrides); a list runs
    the notebook once per parameter set. `quick`: the QUICK settings on every row; `smoke`:
    every notebook's SMOKE quick check (a subset of the rows, outputs in smoke/ folders)."""
    data_dir, runs_root = str(data_dir), str(runs_root)
    ridge, finetune = f"{runs_root}/ridge", f"{runs_root}/finetune"
    extra = {name: {**(QUICK.get(name, {}) if quick else {}), "SMOKE": smoke}
             for name in ("01_eda", "02_gene_clustering", "03_augmentation_screening",
                          "04_adapt", "05_train", "06_gradcam", "07_ensemble_submit")}
    common = {"DATA_DIR": data_dir, **DEMO_MODEL, "OVERWRITE": True}
    return {
        # the starter, one plan step with the tiny model; its runs and CSV apart from the rest's
        "00_quickstart": {"DATA_DIR": data_dir, "PLAN": "cpu_fast", "SMOKE": smoke,
                          "RUN_ROOT": f"{runs_root}_quickstart",
                          "SUBMISSION": str(Path(submission).with_name("quickstart.csv")),
                          "OVERRIDES": {**DEMO_MODEL, **({"TTA": False} if quick else {})}},
        "01_eda": {"DATA_DIR": data_dir, "RUN_DIR": f"{runs_root}/eda", **extra["01_eda"]},
        # writes f"{runs_root}/genes/gene_groups.csv", the GENE_GROUPS that 05/06 can read
        "02_gene_clustering": {"DATA_DIR": data_dir, "RUN_DIR": f"{runs_root}/genes",
                               **extra["02_gene_clustering"]},
        # random-weight networks at 64 px: no download; they show the mechanics, never select
        "03_augmentation_screening": {"DATA_DIR": data_dir, "RUN_DIR": f"{runs_root}/augment",
                                      "DINO_MODEL": "test_vit", "DINO_PRETRAINED": False,
                                      "IMG_SIZE": 64, "LPIPS_PRETRAINED": False,
                                      **extra["03_augmentation_screening"]},
        # a few SimCLR steps of the tiny model; writes f"{runs_root}/adapt/adapt.safetensors",
        # a PRETRAINED that 05 takes (the demo's 05 runs keep their own weights)
        "04_adapt": {"DATA_DIR": data_dir, "RUN_DIR": f"{runs_root}/adapt", **DEMO_MODEL,
                     **DEMO_ADAPT, "OVERWRITE": True, **extra["04_adapt"]},
        "05_train": [
            {**common, "RUN_DIR": ridge, "RECIPE": "ridge", **extra["05_train"]},
            {**common, "RUN_DIR": finetune, "RECIPE": "finetune", **DEMO_FINETUNE,
             **extra["05_train"]},
        ],
        # explains the fine-tuned demo model; figures and tables go to f"{finetune}/gradcam"
        "06_gradcam": {"DATA_DIR": data_dir, "RUN_DIR": finetune,
                       "GENE_GROUPS": f"{runs_root}/genes/gene_groups.csv", **extra["06_gradcam"]},
        "07_ensemble_submit": {"DATA_DIR": data_dir, "RUNS": None, "RUNS_ROOT": runs_root,
                               "SUBMISSION": str(submission), "BLEND": "global",
                               **extra["07_ensemble_submit"]},
    }


def execute_notebook(notebook: Path, parameters: dict, output: Path) -> Path:
    """Execute one notebook top to bottom from the kit root; the executed copy goes to output."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters,
                               cwd=str(kit_root()), kernel_name="python3", progress_bar=False)
    return output


def run_notebooks(parameters: dict[str, dict | list[dict]],
                  executed_dir: str | os.PathLike) -> list[Path]:
    """Execute every numbered notebook in order; a list of parameter sets runs it once per set
    (e.g. 05_train once per recipe). Returns the executed copies."""
    done = []
    for notebook in list_notebooks():
        runs = parameters.get(notebook.stem, {})
        runs = runs if isinstance(runs, list) else [runs]
        for i, params in enumerate(runs):
            start = time.perf_counter()
            suffix = f".{i}" if len(runs) > 1 else ""
            output = resolve(executed_dir) / f"{notebook.stem}{suffix}.ipynb"
            execute_notebook(notebook, params, output)
            print(f"{output.name}: {time.perf_counter() - start:.0f} s → {output}", flush=True)
            done.append(output)
    return done


def run_demo(data_dir: str = DEMO_DATA, runs_root: str = DEMO_RUNS,
             submission: str = DEMO_SUBMISSION, quick: bool = False, **demo_kwargs) -> Path:
    """Write the demo set (skipped if present), run every notebook on it, return the CSV."""
    write_demo(resolve(data_dir), **demo_kwargs)
    run_notebooks(demo_parameters(data_dir, runs_root, submission, quick=quick),
                  resolve(runs_root) / "executed")
    return resolve(submission)


def main() -> None:
    """Command line: `python -m utils.dev.pipeline demo [--quick]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("--quick", action="store_true", help="tiniest settings (CI)")
    parser.add_argument("--data", default=DEMO_DATA, help="demo data folder")
    parser.add_argument("--runs", default=DEMO_RUNS, help="runs folder")
    parser.add_argument("--submission", default=DEMO_SUBMISSION, help="output CSV")
    args = parser.parse_args()
    start = time.perf_counter()
    path = run_demo(args.data, args.runs, args.submission, args.quick)
    print(f"demo done in {time.perf_counter() - start:.0f} s: submission {path}; executed "
          f"notebooks in {resolve(args.runs) / 'executed'}")


if __name__ == "__main__":
    main()
