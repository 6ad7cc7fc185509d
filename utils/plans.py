"""Plans: which preset files to train and how to blend them, chosen by name (00_quickstart).

A plan lists 05_train presets (one run folder each) and the 07_ensemble_submit preset that
blends them. `run_plan` runs them in this process with the functions 05's and 07's cells call
(`utils.config.from_params` on the preset's parameters, `utils.train.train`; `utils.ensemble`
and `utils.submit`), so a plan step and `papermill notebooks/05_train.ipynb -f presets/<x>.yaml`
make the same run. Run folders go under one root (`RUN_ROOT`) by the preset's folder name; a
finished one with the same parameters and data is reused (`utils.runs.reuse_run`), so a
restarted notebook continues where it stopped.

`"auto"` picks the GPU plan on a CUDA GPU, else the CPU ensemble, or `cpu_fast` when the CPU
ensemble's estimate exceeds the time budget. Estimates come from `plan_rates.csv` beside this
module: seconds per patch (train + test) of each preset, per device, with the machine they were
measured on (or marked as an estimate).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from utils import ensemble, submit, train
from utils.config import (
    QuickstartConfig,
    SubmitConfig,
    TrainConfig,
    from_params,
    read_preset,
)
from utils.data import KitData
from utils.places import (
    COLAB_CONTENT,
    COLAB_DRIVE,
    DRIVE_FOLDER,
    KAGGLE_INPUT,
    default_run_root,
    default_submission,
    detect_platform,
    kit_root,
    platform_path,
    resolve,
    submission_copies,
)
from utils.runs import Run
from utils.submit import ConstantColumnsWarning, validate_submission

RATES_FILE = Path(__file__).with_name("plan_rates.csv")
NEXT = ("Next: 01_eda and 02_gene_clustering to look at the data, 05_train to try a recipe "
        "(a preset file or your parameters), 07_ensemble_submit to blend runs your way.")


@dataclass(frozen=True)
class Plan:
    """A named list of 05_train presets and the 07 preset that blends their runs."""

    name: str
    steps: tuple[str, ...]
    blend: str | None  # a 07 preset; None: 07's defaults over the steps' runs
    gpu: bool  # made for a CUDA GPU (a fine-tune step)
    about: str


PLANS = {plan.name: plan for plan in (
    Plan("cpu_fast", ("cpu_fast",), None, False,
         "frozen lite0 features (4 flips) → ridge: the quickest good submission"),
    Plan("cpu_best", ("cpu_best",), None, False,
         "frozen lite0 features (8 views) → ridge: the best single CPU run"),
    Plan("cpu_ensemble", ("cpu_lite0", "cpu_lite1", "cpu_lite2"), "cpu_ensemble", False,
         "one ridge run per backbone (lite0/1/2), blended by 07"),
    Plan("gpu_ensemble", ("cpu_lite0", "cpu_lite1", "cpu_lite2", "gpu_finetune_from_best"),
         "gpu_ensemble", True,
         "the three per-backbone ridge runs and a lite0 fine-tune, blended by 07"),
)}
GPU_PLAN, CPU_PLAN, FAST_PLAN = "gpu_ensemble", "cpu_ensemble", "cpu_fast"


def list_plans() -> list[str]:
    """The plans `create_plan` knows."""
    return list(PLANS)


def create_plan(name: str) -> Plan:
    """The plan called `name`, or an error listing the plans."""
    if name not in PLANS:
        raise ValueError(f"PLAN={name!r} is unknown; choose 'auto' or one of {list_plans()}")
    return PLANS[name]


def load_rates(path: str | os.PathLike = RATES_FILE) -> dict[tuple[str, str], dict]:
    """Seconds per patch of each (preset, device), with the machine and the source."""
    with open(path, newline="") as f:
        return {(row["preset"], row["device"]): {**row, "seconds_per_patch":
                                                  float(row["seconds_per_patch"])}
                for row in csv.DictReader(f)}


def estimate_minutes(plan: Plan, n_patches: int, device: str = "cpu") -> float:
    """Minutes the plan's steps take on `device` ("cpu" or "cuda") for `n_patches` train + test
    patches (07's blend takes seconds); a preset without a rate is an error naming it."""
    rates = load_rates()
    missing = [step for step in plan.steps if (step, device) not in rates]
    if missing:
        raise KeyError(f"{RATES_FILE.name} has no {device} rate for {missing}")
    return sum(rates[step, device]["seconds_per_patch"] for step in plan.steps) * n_patches / 60


def has_cuda() -> bool:
    """Whether torch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def choose_plan(name: str, n_patches: int, cuda: bool | None = None,
                budget_minutes: float = 120.0) -> Plan:
    """The plan called `name`; "auto": the GPU plan with a CUDA GPU, else the CPU ensemble, or
    cpu_fast when the CPU ensemble's estimate for `n_patches` exceeds `budget_minutes`."""
    if name != "auto":
        return create_plan(name)
    if has_cuda() if cuda is None else cuda:
        return PLANS[GPU_PLAN]
    fits = estimate_minutes(PLANS[CPU_PLAN], n_patches, "cpu") <= budget_minutes
    return PLANS[CPU_PLAN if fits else FAST_PLAN]


def describe_plan(plan: Plan, n_patches: int, cuda: bool | None = None) -> str:
    """The plan, its steps and the estimated minutes on this device."""
    device = "cuda" if (has_cuda() if cuda is None else cuda) else "cpu"
    rates = load_rates()
    lines = [f"plan {plan.name}: {plan.about}; {n_patches} patches, about "
             f"{estimate_minutes(plan, n_patches, device):.0f} min on {device}"]
    for i, step in enumerate(plan.steps, 1):
        rate = rates[step, device]
        lines.append(f"  {i}. presets/{step}.yaml: about "
                     f"{rate['seconds_per_patch'] * n_patches / 60:.1f} min ({rate['machine']})")
    blend = f"presets/{plan.blend}.yaml" if plan.blend else "07's defaults"
    lines.append(f"  {len(plan.steps) + 1}. blend the runs: {blend} (seconds)")
    return "\n".join(lines)


# --- weights for offline runs -----------------------------------------------------------------

class WeightsNotFoundError(FileNotFoundError):
    """Offline, a backbone of the plan has no weights file in any place looked at."""


def plan_backbones(plan: Plan, overrides: dict | None = None) -> list[str]:
    """The backbones the plan's steps load pretrained weights for (none when OVERRIDES sets
    PRETRAINED to False or a file)."""
    steps = [{**read_preset(step), **(overrides or {})} for step in plan.steps]
    return sorted({p["BACKBONE"] for p in steps if p.get("PRETRAINED", True) is True})


def weight_places(weights: str | None = None) -> list[Path]:
    """Folders searched for weights files: WEIGHTS, the kit's weights/ (the bundle's), Kaggle
    inputs, My Drive/mai-kit and Colab's /content."""
    places = [resolve(weights)] if weights else []
    places += [kit_root() / "weights", platform_path(KAGGLE_INPUT),
               platform_path(COLAB_DRIVE) / DRIVE_FOLDER, platform_path(COLAB_CONTENT)]
    return [p for p in dict.fromkeys(places) if p.is_dir()]


def find_weights(backbone: str, places: list[Path], depth: int = 5) -> Path | None:
    """The first `<backbone>*.safetensors` (timm's name, e.g. tf_efficientnet_lite0.in1k) in
    `places`, up to `depth` folders down."""
    for place in places:
        for level in range(depth + 1):
            hits = sorted(place.glob("*/" * level + f"{backbone}*.safetensors"))
            if hits:
                return hits[0]
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked (HF_HUB_OFFLINE unset and huggingface.co
    answers)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def find_plan_weights(plan: Plan, weights: str | None = None,
                      overrides: dict | None = None) -> dict[str, str]:
    """A local weights file per backbone of the plan (given to its steps as PRETRAINED); a
    backbone without one downloads from the hub, or, offline, one error naming every file
    needed and where to get it."""
    places = weight_places(weights)
    found = {name: find_weights(name, places) for name in plan_backbones(plan, overrides)}
    missing = [name for name, path in found.items() if path is None]
    if missing and not hub_reachable():
        files = ", ".join(f"{name}.in1k.safetensors" for name in missing)
        raise WeightsNotFoundError(
            f"offline, and no weights file for {missing} in {[str(p) for p in places]}. Needed: "
            f"{files} (each is model.safetensors of https://huggingface.co/timm/<name>.in1k, "
            "renamed). Put them in a dataset you attach (Kaggle: Add Input), in the bundle "
            "(python -m utils.dev.bundle --weights <files>), or in WEIGHTS; or turn the "
            "internet on")
    return {name: str(path) for name, path in found.items() if path is not None}


# --- running a plan -----------------------------------------------------------------------------

@dataclass
class PlanResult:
    """What `run_plan` made: the runs, the submission, the submitted blend's CV, minutes."""

    plan: Plan
    runs: list[Run]
    submission: Path
    cv: dict
    note: str
    minutes: dict[str, float]


def run_root(cfg: QuickstartConfig) -> Path:
    """RUN_ROOT, or the platform's place for runs (`default_run_root`)."""
    return resolve(cfg.run_root) if cfg.run_root else default_run_root()


def step_config(preset: str, cfg: QuickstartConfig, root: Path,
                weights: dict[str, str] | None = None) -> TrainConfig:
    """05_train's config for one plan step: the preset's parameters, DATA_DIR, SMOKE and
    OVERRIDES from the quickstart, RUN_DIR under `root`, a local weights file if found."""
    params = {**read_preset(preset), "DATA_DIR": cfg.data_dir, "SMOKE": cfg.smoke,
              **cfg.overrides}
    params["RUN_DIR"] = str(root / Path(params["RUN_DIR"]).name)
    if params.get("PRETRAINED", True) is True and params["BACKBONE"] in (weights or {}):
        params["PRETRAINED"] = weights[params["BACKBONE"]]
    return from_params(TrainConfig, params)


def run_step(step_cfg: TrainConfig, data: KitData) -> Run:
    """05_train's cells for one config: folds, then train (a finished identical run is
    reused)."""
    folds, splitter = train.make_cv_folds(step_cfg, data)
    return train.train(step_cfg, data, folds, splitter)


def blend_config(plan: Plan, cfg: QuickstartConfig, root: Path,
                 runs: list[Run]) -> SubmitConfig:
    """07's config for the plan: its preset's blend settings, the runs just trained (SMOKE runs
    included: 07's SMOKE moves are not applied again), SUBMISSION or the platform's place."""
    params = read_preset(plan.blend) if plan.blend else {}
    return from_params(SubmitConfig, {
        **params, "DATA_DIR": cfg.data_dir, "SMOKE": False, "RUNS": [str(r.path) for r in runs],
        "RUNS_ROOT": str(root),
        "SUBMISSION": str(resolve(cfg.submission) if cfg.submission else default_submission())})


def blend_and_submit(sub_cfg: SubmitConfig, data: KitData) -> dict:
    """07's cells: load the runs, blend them (nested), audit and write the CSV; returns the
    nested choice 07 submitted (`keep_best`'s result)."""
    runs = submit.load_runs(sub_cfg, data)
    outcome = ensemble.blend_runs(sub_cfg, data, runs)
    submit.submit(sub_cfg, data, outcome)
    return outcome.final


def run_plan(plan: Plan, data: KitData, cfg: QuickstartConfig,
             weights: dict[str, str] | None = None) -> PlanResult:
    """Train every step of `plan` (reusing finished runs), blend them as 07 does and write the
    submission; prints one line per step."""
    root, minutes, runs = run_root(cfg), {}, []
    device = "cuda" if has_cuda() else "cpu"
    rates = load_rates()
    n_patches = len(data.train) + len(data.test)
    for i, step in enumerate(plan.steps, 1):
        step_cfg = step_config(step, cfg, root, weights)
        guess = rates[step, device]["seconds_per_patch"] * n_patches / 60
        print(f"[{i}/{len(plan.steps)}] presets/{step}.yaml → {step_cfg.run_dir} "
              f"(about {guess:.1f} min)", flush=True)
        start = time.perf_counter()
        runs.append(run_step(step_cfg, data))
        minutes[step] = (time.perf_counter() - start) / 60
        print(f"[{i}/{len(plan.steps)}] {step}: CV {runs[-1].cv['overall']['score']:.4f} "
              f"({minutes[step]:.1f} min)", flush=True)
    sub_cfg = blend_config(plan, cfg, root, runs)
    start = time.perf_counter()
    final = blend_and_submit(sub_cfg, data)
    minutes["blend"] = (time.perf_counter() - start) / 60
    return PlanResult(plan, runs, resolve(sub_cfg.submission), final["cv"], final["note"],
                      minutes)


# --- the end: the CSV, checked, and where to go next ----------------------------------------------

def describe_result(result: PlanResult, data: KitData) -> str:
    """The CSV's path, its check against sample_submission.csv, the blend's CV headline and
    range over folds, minutes per step, and where to go next."""
    import pandas as pd

    frame = pd.read_csv(result.submission, dtype={"ID": str})
    with warnings.catch_warnings():  # constant columns were reported when the CSV was written
        warnings.simplefilter("ignore", ConstantColumnsWarning)
        validate_submission(frame, data.sample)
    cv = result.cv
    spent = ", ".join(f"{k} {v:.1f}" for k, v in result.minutes.items())
    return "\n".join([
        f"submission: {result.submission}",
        f"checked against sample_submission.csv: {len(frame)} rows x {frame.shape[1] - 1} "
        "genes, same IDs and columns in the same order, no NaN or inf",
        f"CV ({cv['splitter']}, {cv['n_folds']} folds, nested): {cv['overall']['score']:.4f} "
        f"(folds {cv['min']['score']:.4f} to {cv['max']['score']:.4f}); {result.note}",
        f"minutes: {spent}", NEXT])


def share_submission(path: str | os.PathLike) -> list[Path]:
    """Copy the submission where it outlives the runtime (My Drive/mai-kit on Colab with Drive
    mounted) and, on Colab, start its download; returns the copies."""
    copies = []
    for copy in submission_copies(path):
        copy.parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copyfile(path, copy)))
        print(f"copy kept in {copy}")
    if detect_platform() == "colab":
        try:
            from google.colab import files
            files.download(str(path))
        except ImportError:
            print(f"download {path} from the Files panel")
    return copies
