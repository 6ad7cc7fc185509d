"""Run folders: what a training run leaves behind and what the ensemble notebook reads.

A run folder holds `config.json` (the resolved config), `folds.npy` (fold of every train row),
`oof.npy` (out-of-fold predictions, train order), `test_pred.npy` (test predictions, test.csv
order) and `cv.json` (`{"splitter", "n_folds", "folds": [parts], "overall": mean of folds,
"oof": parts}`), all on the original target scale. `config.json` is written last, so a folder
that has it is complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.io import read_json, save_npy, write_json
from utils.paths import resolve

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
                                f"(run notebooks/04_train.ipynb with RUN_DIR={str(run_dir)!r})")
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
                                f"{resolve(root)} (RUNS_ROOT); run notebooks/04_train.ipynb "
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


def mean_test_pred(runs: list[Run]) -> np.ndarray:
    """The plain average of the runs' test predictions."""
    if not runs:
        raise ValueError("no runs to average: RUNS is empty")
    return np.mean([run.test_pred for run in runs], axis=0)


def runs_table(runs: list[Run]):
    """One row per run: recipe, backbone, splitter and every CV part (fold mean and OOF)."""
    import pandas as pd

    rows = [{"run": run.name, "recipe": run.config.get("recipe"),
             "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"],
             "folds": run.cv["n_folds"], **run.cv["overall"], "oof_score": run.cv["oof"]["score"]}
            for run in runs]
    return pd.DataFrame(rows).set_index("run")
