"""Run folders: what a training run leaves behind, and what later notebooks read from it.

A run folder holds `config.json` (the resolved config), `folds.npy` (fold of every train row),
`oof.npy` (out-of-fold predictions, train order), `test_pred.npy` (test predictions, test.csv
order) and `cv.json` (`{"splitter", "n_folds", "folds": [parts], "overall": mean of folds,
"oof": parts}`), all on the original target scale. `config.json` is written last, so a folder
that has it is complete. A fine-tuning run adds `model.json` (how to rebuild every trained
model: backbone, size, genes and heads per unit), `weights/<unit>.safetensors`, `history.json`
(one row per unit and epoch) and `checkpoints/` (`settings.json`; per unit `last.pt` while it
trains, `result.npz` when done). A unit is one trained model: a fold (`fold0`), or a fold and a
gene group (`fold0-<group>`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from utils.choices import upgrade_config
from utils.paths import as_json, read_json, resolve, run_dir, save_npy, write_json

RUN_FILES = ("folds.npy", "oof.npy", "test_pred.npy", "cv.json", "config.json")


@dataclass(frozen=True)
class Run:
    """A finished run loaded from its folder."""

    path: Path
    config: dict
    cv: dict
    folds: np.ndarray
    oof: np.ndarray
    test_pred: np.ndarray

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.name


def save_run(run_dir: str | os.PathLike, config: dict, folds: np.ndarray, oof: np.ndarray,
             test_pred: np.ndarray, cv: dict) -> Path:
    """Write a run folder; every file is written atomically and config.json comes last."""
    folder = resolve(run_dir)
    for name, array in (("folds", folds), ("oof", oof), ("test_pred", test_pred)):
        save_npy(folder / f"{name}.npy", np.asarray(array))
    write_json(folder / "cv.json", cv)
    write_json(folder / "config.json", config)
    return folder


def save_config(config) -> Path:
    """A notebook's run folder (`config.run_dir`, created) with its resolved config written as
    config.json (01 and 02 write it first; the training notebooks write it last)."""
    folder = run_dir(config.run_dir)
    write_json(folder / "config.json", asdict(config))
    return folder


def is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether a folder holds every file of a finished run."""
    folder = resolve(run_dir)
    return all((folder / name).is_file() for name in RUN_FILES)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder; an incomplete one is an error naming the folder and missing files."""
    folder = resolve(run_dir)
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a finished run: missing {', '.join(missing)} "
                                f"(run notebooks/05_train.ipynb with RUN_DIR={str(run_dir)!r})")
    return Run(path=folder, config=read_json(folder / "config.json"),
               cv=read_json(folder / "cv.json"), folds=np.load(folder / "folds.npy"),
               oof=np.load(folder / "oof.npy"), test_pred=np.load(folder / "test_pred.npy"))


def find_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Finished run folders under `root` (any depth), sorted by path."""
    return sorted(p.parent for p in resolve(root).rglob("config.json") if is_complete(p.parent))


def check_shapes(runs: list[Run], n_train: int, n_test: int, n_genes: int) -> None:
    """Every run's predictions fit the data at hand, or an error naming the run."""
    for run in runs:
        for what, array, rows in (("oof", run.oof, n_train), ("test_pred", run.test_pred, n_test)):
            if array.shape != (rows, n_genes):
                raise ValueError(f"run {run.path}: {what}.npy has shape {array.shape}, but the "
                                 f"data has {rows} rows x {n_genes} genes; was it trained on "
                                 f"other data (config data_dir={run.config.get('data_dir')})?")


def select_runs(runs: Sequence[str] | None, root: str | os.PathLike = "runs") -> list[Path]:
    """The listed run folders; if none are listed, every finished run found under `root`."""
    if runs:
        return [resolve(run) for run in runs]
    found = find_runs(root)
    if not found:
        raise FileNotFoundError(f"RUNS is empty and there is no finished run folder under "
                                f"{resolve(root)} (RUNS_ROOT); run notebooks/05_train.ipynb "
                                "first, or list run folders in RUNS")
    return found


def _canonical_folds(folds: np.ndarray) -> np.ndarray:
    """Fold labels renumbered by first appearance: the same split with other numbers is equal."""
    _, first, inverse = np.unique(folds, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]


def check_folds(runs: list[Run]) -> None:
    """All runs share one CV split (folds.npy, up to fold numbering), or an error naming which
    runs hold which split: blending or comparing runs fitted on different folds is not honest."""
    splits: dict[bytes, list[Run]] = {}
    for run in runs:
        splits.setdefault(_canonical_folds(run.folds).tobytes(), []).append(run)
    if len(splits) > 1:
        listing = "; ".join(
            f"split {i + 1}: " + ", ".join(f"{run.name} ({run.cv['splitter']}, "
                                          f"{run.cv['n_folds']} folds)" for run in group)
            for i, group in enumerate(splits.values()))
        raise ValueError(f"the runs were cross-validated on {len(splits)} different splits "
                         f"(folds.npy differ), so their OOF predictions cannot be blended: "
                         f"{listing}. List only runs of one split in RUNS, or retrain with the "
                         "same CV, N_FOLDS and SEED")




def runs_table(runs: list[Run]):
    """One row per run: recipe, backbone, splitter and every CV part (fold mean and OOF)."""
    import pandas as pd

    rows = [{"run": run.name, "recipe": run.config.get("recipe"),
             "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"],
             "folds": run.cv["n_folds"], **run.cv["overall"], "oof_score": run.cv["oof"]["score"]}
            for run in runs]
    return pd.DataFrame(rows).set_index("run")


def reuse_run(run_dir: str | os.PathLike, config: dict) -> Run | None:
    """The finished run in `run_dir` if it was trained with the same parameters (OVERWRITE
    aside); None if there is none; an error naming what changed if the parameters differ."""
    if not is_complete(run_dir):
        return None
    run = load_run(run_dir)
    saved = upgrade_config(run.config)  # parameters renamed since it was trained: today's names
    changed = {k: (saved.get(k), v) for k, v in as_json(config).items()
               if k != "overwrite" and saved.get(k) != v}
    if changed:
        raise FileExistsError(f"{run.path} holds a run with other parameters "
                              f"(saved, now): {changed}; set OVERWRITE=True or a new RUN_DIR")
    return run


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB); NaN on Windows."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)


# --- fine-tuning runs: model.json, weights, history, checkpoints ------------------------------

def weights_file(unit: str) -> str:
    """Where a unit's weights go, relative to the run folder."""
    return f"weights/{unit}.safetensors"


def prepare_checkpoints(run_dir: str | os.PathLike, settings: dict, resume: bool) -> Path:
    """The checkpoint folder of a fine-tuning run: kept to resume an unfinished run with the same
    `settings`, cleared for a fresh start (RESUME=False, or retraining a finished run)."""
    run = resolve(run_dir)
    folder = run / "checkpoints"
    settings = as_json(settings)
    if not resume or is_complete(run):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(run / "weights", ignore_errors=True)
    saved = folder / "settings.json"
    if saved.is_file() and upgrade_config(read_json(saved)) != settings:
        old = upgrade_config(read_json(saved))
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise ValueError(f"{folder} holds checkpoints of an unfinished run with other settings "
                         f"(saved, now): {changed}. Set RESUME=False to start over, or use "
                         "another RUN_DIR")
    write_json(saved, settings)
    return folder


class Stopwatch:
    """Seconds spent on a run over all its processes: a resumed run adds the time its earlier
    processes recorded (up to their last checkpoint) in `elapsed.json` of its checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.before = float(read_json(self.path)["seconds"]) if self.path.is_file() else 0.0
        self.start = time.perf_counter()

    def total(self) -> float:
        """Seconds so far, this process and the earlier ones."""
        return self.before + time.perf_counter() - self.start

    def tick(self) -> None:
        """Record the seconds so far (after each checkpoint)."""
        write_json(self.path, {"seconds": round(self.total(), 1)})


def read_model_info(run_dir: str | os.PathLike) -> dict:
    """`model.json` of a fine-tuning run; any other folder is an error that says why."""
    folder = resolve(run_dir)
    if (folder / "model.json").is_file():
        return read_json(folder / "model.json")
    if (folder / "config.json").is_file():
        recipe = read_json(folder / "config.json").get("recipe")
        raise ValueError(f"{folder} is a RECIPE={recipe!r} run: it has no fine-tuned network to "
                         "explain (a frozen backbone + ridge has no model.json or weights/). Set "
                         "RUN_DIR to a run of 05_train with RECIPE='finetune'")
    raise FileNotFoundError(f"{folder} is not a run folder (no model.json, no config.json): run "
                            f"notebooks/05_train.ipynb with RECIPE='finetune' and "
                            f"RUN_DIR={str(run_dir)!r} first, or set RUN_DIR to a fine-tuning run")


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch history of a fine-tuning run folder (empty for other recipes)."""
    path = resolve(run_dir) / "history.json"
    return read_json(path) if path.is_file() else []
