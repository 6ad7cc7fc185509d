"""The quickstart's GPU plan end to end on a small cut of a DACON-layout folder with sections:
each 05 preset of `utils.plans`' GPU plan (the per-backbone ridge runs and the fine-tune from
cpu_best's ridge), then 07's blend of them, trained on some sections and scored on one held out,
with every metric part; wall seconds and peak GPU memory per step; then `gpu_check.py`'s table.
Exit code 1 if a step or a check fails (an exception, a non-finite score).

Steps run in this process through `benchmarks.heldout` (05's `utils.train.train`, 07's
`utils.submit.load_runs` and `utils.ensemble.blend_runs`); every choice (alphas, epochs, blend
weights, keep-the-best) is nested in the training sections (one CV fold per section), the held
section only scores. On CUDA every step runs with COMPILE=True (the kit compiles frozen-feature
extraction: the ridge members') and the fine-tune in the loop's mixed precision (bf16 on
Ampere+, fp16 with loss scaling before). A finished run is retrained (OVERWRITE), so each
step's seconds are its own; the first step's include decoding the images, and features already
in $KIT_CACHE_DIR are read, not extracted.
Each step's row is appended to `--results`; `--compare cpu` prints the latest rows of the same
cut measured on that device beside this run's (the scores should agree to noise).

    # a cut that travels (≤ 64 MB with the weights that fit; a member without weights is left
    # out): 64 spots of each of C2, C3 (training) and C4 (held out)
    python -m benchmarks.gpu_plan --write-cut /tmp/cut --data /path/to/her2st \\
        --weights /path/to/weights --train C2 C3 --held C4
    # on one GPU (the goal: ≤ 8 minutes), beside the CPU rows of the same cut in --results
    python -m benchmarks.gpu_plan --data /tmp/cut --compare cpu
    # the CPU baseline of that cut (add --epochs N to shorten the fine-tune; the rows say so)
    python -m benchmarks.gpu_plan --data /tmp/cut --device cpu
    python -m benchmarks.gpu_plan --tiny --device cpu  # CI: timm test models on a demo set
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import gpu_check
from benchmarks.heldout import (
    METRIC,
    Bench,
    Rotation,
    RunSpec,
    make_rotation,
    read_sections,
    run_in,
    weights_for,
)
from benchmarks.record import RESULTS, append_rows, environment
from utils.config import read_preset
from utils.data import KitData, load_data, rows_of
from utils.metric import score
from utils.plans import GPU_PLAN, create_plan

TINY_BACKBONES = {"tf_efficientnet_lite0": "test_efficientnet",
                  "tf_efficientnet_lite1": "test_convnext", "tf_efficientnet_lite2": "test_resnet"}
TINY_SET = {"PRETRAINED": False, "IMG_SIZE": 64, "TTA": False, "EPOCHS": 1, "BATCH_SIZE": 8}
TINY_DEMO = {"n_train": 96, "n_test": 8, "n_genes": 60, "n_train_slices": 4, "image_size": 64,
             "seed": 3}
TINY_SECTIONS = ("demo_slices.csv", ("slice_1", "slice_2"), "slice_3")
CUT_TEST_ROWS = 4  # the cut keeps a few test rows: the DACON layout needs them, the plan not
COLUMNS = ["step", "setting", "seconds", "peak GPU GB", "cv", *METRIC[1:], "score", "status",
           "note"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="DACON-layout folder with a sections file")
    parser.add_argument("--sections", help="CSV of ID → section (default: train_sections.csv "
                        "in --data)")
    parser.add_argument("--weights", help="folder of <backbone>*.safetensors (default: the "
                        "weights/ folder in --data, else the hub)")
    parser.add_argument("--train", nargs="+", help="training sections (default: all but --held)")
    parser.add_argument("--held", help="the held-out section (default: the last one)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--epochs", type=int, help="the fine-tune's EPOCHS (default: preset's)")
    parser.add_argument("--tiny", action="store_true", help="CI-sized: timm test models at 64 "
                        "px on a demo set")
    parser.add_argument("--out", default="runs/gpu_plan", help="where runs are written")
    parser.add_argument("--results", help="rows appended here (default: results/gpu_plan.csv; "
                        "with --tiny, tiny.csv in --out)")
    parser.add_argument("--compare", help="a device (cpu, cuda) whose rows of the same cut in "
                        "--results are printed beside this run's")
    parser.add_argument("--no-check", action="store_true", help="skip gpu_check.py's table")
    parser.add_argument("--write-cut", metavar="DIR", help="write the cut there and stop")
    parser.add_argument("--spots", type=int, default=64, help="--write-cut: spots per section")
    parser.add_argument("--budget-mb", type=float, default=64.0, help="--write-cut: size limit")
    args = parser.parse_args(argv)
    if not (args.data or args.tiny):
        parser.error("--data DIR is needed (or --tiny)")
    if args.results is None:
        args.results = str(Path(args.out) / "tiny.csv" if args.tiny else RESULTS / "gpu_plan.csv")
    beside = Path(args.data or "") / "weights"
    if args.weights is None and not args.write_cut and args.data and beside.is_dir():
        args.weights = str(beside)
    return args


# --- the cut ----------------------------------------------------------------------------------

def choose_sections(sections: np.ndarray, train: list[str] | None,
                    held: str | None) -> tuple[list[str], str]:
    """The training sections and the held one (default: the last section; the others)."""
    have = sorted(set(sections))
    held = held or have[-1]
    train = list(train or [s for s in have if s != held])
    unknown = sorted(set(train + [held]) - set(have))
    if unknown or held in train or not train:
        raise SystemExit(f"--train {train} --held {held}: sections must exist ({have}), "
                         "the held one not among the training ones")
    return train, held


def spread_rows(sections: np.ndarray, names: list[str], spots: int | None) -> np.ndarray:
    """Row numbers of the named sections; with `spots`, that many of each, evenly spread along
    its rows (chosen by position only)."""
    rows = []
    for name in names:
        mine = np.flatnonzero(sections == name)
        if spots and spots < len(mine):
            mine = mine[np.unique(np.linspace(0, len(mine) - 1, spots).round().astype(int))]
        rows.append(mine)
    return np.sort(np.concatenate(rows))


def copy_rows(src: Path, out: Path, frame: pd.DataFrame) -> int:
    """Copy the images of `frame`'s rows (their `path`) from `src` to `out`; their bytes."""
    total = 0
    for path in frame["path"]:
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        total += shutil.copyfile(src / path, target).stat().st_size
    return total


def fitting_weights(weights: str | None, backbones: list[str], room: int) -> list[Path]:
    """Weights files of `backbones` (in order) that fit in `room` bytes; one line per one left
    out."""
    chosen = []
    for backbone in backbones:
        found = sorted(Path(weights).glob(f"{backbone}*.safetensors")) if weights else []
        if not found:
            print(f"{backbone}: no weights file in {weights}: its steps will be left out")
        elif found[0].stat().st_size > room:
            print(f"{backbone}: its weights ({found[0].stat().st_size / 1e6:.1f} MB) do not fit "
                  f"in the {room / 1e6:.1f} MB left: its steps will be left out")
        else:
            chosen.append(found[0])
            room -= found[0].stat().st_size
    return chosen


def write_cut(args: argparse.Namespace) -> Path:
    """The DACON-layout cut (train.csv of the chosen sections' spots, a few test rows, the
    sections file, the images) and the weights that fit beside it, under `--budget-mb`; written
    in a temporary folder renamed into place when complete."""
    src, out = Path(args.data), Path(args.write_cut)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--write-cut {out}: not empty; choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        used, what = write_cut_files(args, src, tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cut: {what} in {out}, {used / 1e6:.1f} MB with its weights")
    return out


def write_cut_files(args: argparse.Namespace, src: Path, out: Path) -> tuple[int, str]:
    """`write_cut`'s files in `out`: their bytes and what they hold in words."""
    sections_file = Path(args.sections or src / "train_sections.csv")
    train_csv = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    table = pd.read_csv(sections_file, dtype=str).set_index("ID").loc[train_csv["ID"]]
    sections = table[table.columns[0] if "section" not in table else "section"].to_numpy()
    train, held = choose_sections(sections, args.train, args.held)
    rows = spread_rows(sections, train + [held], args.spots)
    test = pd.read_csv(src / "test.csv", dtype=str).head(CUT_TEST_ROWS)
    sample = pd.read_csv(src / "sample_submission.csv", dtype=str).head(CUT_TEST_ROWS)
    out.mkdir(parents=True)
    train_csv.iloc[rows].to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    sample.to_csv(out / "sample_submission.csv", index=False)
    table.iloc[rows].reset_index().to_csv(out / sections_file.name, index=False)
    used = copy_rows(src, out, train_csv.iloc[rows]) + copy_rows(src, out, test)
    used += sum(f.stat().st_size for f in out.glob("*.csv"))
    backbones = list(dict.fromkeys(read_preset(s)["BACKBONE"] for s in create_plan(GPU_PLAN)
                                   .steps))
    for path in fitting_weights(args.weights, backbones, int(args.budget_mb * 1e6) - used):
        (out / "weights").mkdir(exist_ok=True)
        used += shutil.copyfile(path, out / "weights" / path.name).stat().st_size
    return used, f"{len(rows)} spots of {train + [held]} and {len(test)} test rows"


def tiny_data(out: Path) -> tuple[Path, str, list[str], str]:
    """A demo set with four slices (the tiny mode's data), its sections file and the cut."""
    from utils.dev.demo import write_demo

    root = write_demo(out / "demo", **TINY_DEMO)
    name, train, held = TINY_SECTIONS
    return root, str(root / name), list(train), held


def load_cut(args: argparse.Namespace) -> tuple[KitData, np.ndarray, list[str], str]:
    """The data restricted to the training and held sections' rows (the folder's own rows when
    it holds no others), each row's section, the training sections and the held one."""
    if args.tiny:
        root, sections_file, train, held = tiny_data(Path(args.out))
    else:
        root, sections_file, train, held = args.data, args.sections, args.train, args.held
    data = load_data(root)
    sections = read_sections(data, Path(sections_file or data.root / "train_sections.csv"))
    train, held = choose_sections(sections, train, held)
    rows = spread_rows(sections, train + [held], None)
    if len(rows) < len(sections):
        data = rows_of(data, rows, np.arange(len(data.test)), "test", "the cut")
    return data, sections[rows], train, held


# --- the plan's steps -------------------------------------------------------------------------

def step_params(args: argparse.Namespace, step: str, device: str) -> dict:
    """A plan step's preset with what this check sets: OVERWRITE, COMPILE on CUDA, the tiny
    backbones and sizes, `--epochs` for the fine-tune."""
    params = {**read_preset(step), "OVERWRITE": True}
    if device == "cuda":
        params["COMPILE"] = True
    if args.tiny:
        params = {**params, **TINY_SET, "BACKBONE": TINY_BACKBONES[params["BACKBONE"]]}
    if args.epochs and params["RECIPE"] == "finetune":
        params["EPOCHS"] = args.epochs
    return params


def plan_specs(args: argparse.Namespace, device: str) -> tuple[list[RunSpec], list[str]]:
    """The GPU plan as harness runs (the 07 blend last, over every member kept) and one line
    per member left out for want of its weights."""
    plan = create_plan(GPU_PLAN)
    specs, left_out = [], []
    for step in plan.steps:
        try:
            params = weights_for(step_params(args, step, device), args.weights)
        except FileNotFoundError as err:
            left_out.append(f"{step}: left out ({err})")
            continue
        specs.append(RunSpec(step, params))
    blend = RunSpec(plan.name, read_preset(plan.blend), tuple(s.name for s in specs))
    return [*specs, blend], left_out


def describe_step(spec: RunSpec) -> str:
    """A step's recipe in a few words."""
    if spec.members:
        return f"07 over {len(spec.members)} runs, {spec.params.get('BLEND', 'global')} weights"
    p = spec.params
    epochs = f", {p['EPOCHS']} epochs" if p["RECIPE"] == "finetune" else ""
    return f"{p['RECIPE']} {p['BACKBONE']} {p.get('IMG_SIZE') or ''} px{epochs}"


def step_row(spec: RunSpec, rotation: Rotation, device) -> dict:
    """Run one step in the rotation, timed; its row: CV, every part on the held section."""
    members = tuple(m for m in spec.members if m in rotation.runs)
    if spec.members and not members:
        raise RuntimeError("no member run finished: nothing to blend")
    spec = replace(spec, members=members)
    with gpu_check.Clock(device) as clock:
        run, choice, _ = run_in(spec, Bench("gpu_plan", ()), rotation)
    parts = score(rotation.truth, run.test_pred)
    ok = all(math.isfinite(parts[k]) for k in METRIC) and run.test_pred.shape == (
        rotation.truth.shape)
    return {"step": spec.name, "setting": describe_step(spec),
            "seconds": round(clock.seconds, 1), "peak GPU GB": gpu_check.gb(clock.peak_gb),
            "cv": round(run.cv["overall"]["score"], 4),
            **{k: round(parts[k], 4) for k in METRIC}, "status": "ok" if ok else "FAIL",
            "note": step_note(run, choice) if ok else f"non-finite score; {choice}"}


def step_note(run, choice: str) -> str:
    """What the step chose, and for a fine-tune its mixed precision and training speed."""
    details = run.config.get("details", {})
    speed = ([f"amp {details['amp']}", f"{details['train_images_per_s']} train img/s"]
             if "amp" in details else [])
    return "; ".join(x for x in (choice, *speed) if x)


def failed_step(spec: RunSpec, err: BaseException) -> dict:
    """A FAIL row naming the exception (and where it was raised)."""
    print("".join(traceback.format_exception(err)[-3:]), file=sys.stderr)
    return {**gpu_check.failed_row(spec.name, err), "step": spec.name,
            "setting": describe_step(spec)}


def run_steps(specs: list[RunSpec], rotation: Rotation, device) -> list[dict]:
    """Every step's row, in plan order (a failed member is left out of the blend)."""
    rows = []
    for spec in specs:
        print(f"[{len(rows) + 1}/{len(specs)}] {spec.name}: {describe_step(spec)}", flush=True)
        try:
            rows.append(step_row(spec, rotation, device))
        except Exception as err:  # noqa: BLE001 (every failure is a row, then exit code 1)
            rows.append(failed_step(spec, err))
        gpu_check.free_memory(device)
    return rows


# --- results and the table ----------------------------------------------------------------------

def describe_cut(data: KitData, sections: np.ndarray, train: list[str], held: str,
                 specs: list[RunSpec]) -> str:
    """The cut and the plan's settings in words (what `--compare` matches rows on; the data's
    fingerprint hashes its files' content, so a copy of the cut elsewhere matches)."""
    n_train, n_held = int((sections != held).sum()), int((sections == held).sum())
    return (f"data {data.fingerprint['digest'][:10]}: train {'+'.join(train)} ({n_train} "
            f"spots), held {held} ({n_held} spots); plan {plan_digest(specs)}")


def plan_digest(specs: list[RunSpec]) -> str:
    """A hash of the steps' settings (not COMPILE, which CUDA alone sets, nor the folder the
    weights files lie in)."""
    settings = [[s.name, s.members, {k: Path(v).name if k == "PRETRAINED" and isinstance(
        v, str) else v for k, v in s.params.items() if k != "COMPILE"}] for s in specs]
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(
        )[:8]


def result_rows(rows: list[dict], cut: str, device) -> list[dict]:
    """The rows as results rows: the cut, the device, machine and versions."""
    return [{"cut": cut, "device": device.type, **row, **environment(),
             "source": "benchmarks.gpu_plan"} for row in rows]


def earlier_rows(path: Path, cut: str, device: str | None) -> pd.DataFrame | None:
    """The latest row of each step measured on `device` for the same cut (None: none)."""
    if not device or not path.is_file():
        return None
    table = pd.read_csv(path)
    table = table[(table["cut"] == cut) & (table["device"] == device)]
    return table.drop_duplicates("step", keep="last").set_index("step") if len(table) else None


def format_plan(rows: list[dict], earlier: pd.DataFrame | None, device: str | None) -> str:
    """The steps as one aligned table; with earlier rows, their score and seconds beside."""
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if earlier is not None:
        table.insert(9, f"score ({device})", table["step"].map(earlier["score"]))
        table.insert(10, "Δ score", (table["score"] - table[f"score ({device})"]).round(4))
        table.insert(3, f"seconds ({device})", table["step"].map(earlier["seconds"]))
    table = table.astype(object).where(table.notna(), "")
    with pd.option_context("display.max_colwidth", 120, "display.width", 400):
        return table.to_string(index=False)


def run_plan(args: argparse.Namespace, device) -> tuple[list[dict], str]:
    """The plan on the cut: every step's row and the cut in words."""
    data, sections, train, held = load_cut(args)
    specs, left_out = plan_specs(args, device.type)
    cut = describe_cut(data, sections, train, held, specs)
    print(f"plan {GPU_PLAN} on {cut}; {gpu_check.describe_device(device)}; "
          f"COMPILE {device.type == 'cuda' or 'as preset'}, mixed precision "
          f"{amp_name(device)}", flush=True)
    print("\n".join(left_out) or "every member has its weights", flush=True)
    out = Path(args.out).absolute() / device.type
    rotation = make_rotation(Bench("gpu_plan", tuple(specs)), data, sections, held, out)
    return run_steps(specs, rotation, device), cut


def amp_name(device) -> str:
    """The loop's mixed-precision dtype on `device`, in words."""
    from utils.loop import amp_dtype

    return str(amp_dtype(device) or "off").removeprefix("torch.")


def run_checks(args: argparse.Namespace, device) -> int:
    """gpu_check.py's table (tiny with --tiny; on CPU without --tiny, skipped: its sizes are a
    GPU's); its exit code."""
    if args.no_check or (device.type == "cpu" and not args.tiny):
        print("gpu_check.py: skipped" + ("" if args.no_check else " (its sizes are a GPU's; "
                                         "--tiny runs them at CPU sizes)"))
        return 0
    return gpu_check.main(["--tiny", "--device", "cpu"] if args.tiny else
                          ["--device", device.type])


def main(argv: list[str] | None = None) -> int:
    """Write a cut, or run the plan and print its table, then gpu_check's; 0 if all is ok,
    1 if a step or check failed, 2 without the CUDA device asked for."""
    args = parse_args(argv)
    if args.write_cut:
        write_cut(args)
        return 0
    import torch

    if (args.device == "cuda") != torch.cuda.is_available():
        print("no CUDA device: run this on a GPU runtime, or with --device cpu" if
              args.device == "cuda" else "--device cpu: the kit trains on the visible GPU; "
              "hide it for a CPU run (CUDA_VISIBLE_DEVICES= python -m benchmarks.gpu_plan ...)")
        return 2
    device = torch.device(args.device)
    start = time.perf_counter()
    rows, cut = run_plan(args, device)
    earlier = earlier_rows(Path(args.results), cut, args.compare)
    if args.compare and earlier is None:
        print(f"--compare {args.compare}: {args.results} has no {args.compare} rows of {cut}")
    append_rows(Path(args.results), result_rows(rows, cut, device))
    print(format_plan(rows, earlier, args.compare))
    failed = [row["step"] for row in rows if row["status"] != "ok"]
    print(f"plan: {time.perf_counter() - start:.1f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every step ok"), flush=True)
    return max(1 if failed else 0, run_checks(args, device))


if __name__ == "__main__":
    sys.exit(main())
