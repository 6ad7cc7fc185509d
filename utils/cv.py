"""Cross-validation splitters by name and honest CV reports.

The DACON test set is an unseen tissue slice and train rows are stored slice by slice, so the
default splitter holds out contiguous row blocks: a random split puts neighbouring spots of one
slice on both sides and overstates every score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.metric import KEYS, score

DEFAULT_SPLITTER = "blocks"


def _blocks(n_rows: int, n_folds: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Contiguous row blocks of (nearly) equal size, in row order."""
    return np.arange(n_rows) * n_folds // n_rows


def _random(n_rows: int, n_folds: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Shuffled rows dealt into folds of (nearly) equal size: optimistic, for comparison."""
    folds = np.empty(n_rows, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n_rows)] = np.arange(n_rows) % n_folds
    return folds


def _groups(n_rows: int, n_folds: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Whole groups per fold, greedily balancing fold sizes (largest groups first)."""
    if groups is None or len(groups) != n_rows:
        raise ValueError("the 'groups' splitter needs one group label per train row; pass "
                         "CV='groups:<column of train.csv or CSV file with ID,group>'")
    labels, inverse, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True,
                                        return_counts=True)
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} groups ({', '.join(labels[:10])}) cannot fill "
                         f"{n_folds} folds; lower N_FOLDS to at most {len(labels)}")
    fold_of_group, sizes = np.empty(len(labels), dtype=np.int64), np.zeros(n_folds)
    for g in np.argsort(-counts, kind="stable"):
        fold_of_group[g] = int(np.argmin(sizes))
        sizes[fold_of_group[g]] += counts[g]
    return fold_of_group[inverse]


SPLITTERS: dict[str, Callable[..., np.ndarray]] = {
    "blocks": _blocks, "random": _random, "groups": _groups,
}


def list_splitters() -> list[str]:
    """Names accepted by `make_folds` (the part of CV before any ':')."""
    return sorted(SPLITTERS)


def make_folds(cv: str, n_rows: int, n_folds: int, seed: int = 0,
               groups: Sequence | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) for every train row, by splitter name."""
    name = cv.split(":", 1)[0]
    if name not in SPLITTERS:
        raise ValueError(f"unknown CV splitter {cv!r}; choose from {list_splitters()}")
    if not 2 <= n_folds <= n_rows:
        raise ValueError(f"N_FOLDS must be between 2 and the number of rows ({n_rows}); "
                         f"got {n_folds}")
    groups = None if groups is None else np.asarray(groups)
    return SPLITTERS[name](n_rows, n_folds, seed, groups)


def read_groups(cv: str, train: pd.DataFrame, data_dir: Path | None = None) -> np.ndarray | None:
    """Group labels for CV='groups:<file.csv>[:<column>]' (a CSV with ID and a group column).

    The file is looked up as given, then in the data folder; without a column name the column
    `group`, else the last column, is used. Other splitters need no groups (None).
    """
    if not cv.startswith("groups"):
        return None
    spec = cv.partition(":")[2]
    if not spec:
        raise ValueError("CV='groups' needs a file: 'groups:<file.csv>' or "
                         "'groups:<file.csv>:<column>' with an ID column")
    name, _, column = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path = next((p for p in (Path(name), Path(data_dir or ".") / name) if p.is_file()), None)
    if path is None:
        raise ValueError(f"CV={cv!r}: group file {name!r} not found (looked in the working "
                         f"folder and in {data_dir})")
    table = pd.read_csv(path, dtype={"ID": str})
    column = column or ("group" if "group" in table.columns else table.columns[-1])
    if "ID" not in table.columns or column not in table.columns:
        raise ValueError(f"{path}: needs an ID column and the group column {column!r}; has "
                         f"{list(table.columns)}")
    missing = sorted(set(train["ID"]) - set(table["ID"]))
    if missing:
        raise ValueError(f"{path}: no group for {len(missing)} train IDs, e.g. {missing[:5]}")
    return table.drop_duplicates("ID").set_index("ID").loc[train["ID"], column].to_numpy()


def score_folds(y: np.ndarray, oof: np.ndarray, folds: np.ndarray, splitter: str) -> dict:
    """CV report: each fold scored as a whole test set, their mean, and the pooled-OOF score."""
    per_fold = [score(y[folds == k], oof[folds == k]) for k in np.unique(folds)]
    overall = {key: float(np.mean([f[key] for f in per_fold])) for key in KEYS}
    return {"splitter": splitter, "n_folds": len(per_fold), "folds": per_fold,
            "overall": overall, "oof": score(y, oof)}


def format_cv(cv: dict) -> str:
    """A short table of a CV report: one line per fold, the mean and the pooled OOF."""
    header = f"CV splitter={cv['splitter']!r} folds={cv['n_folds']}\n" + \
        " " * 8 + "".join(f"{k:>10}" for k in KEYS)
    rows = [(f"fold {i}", f) for i, f in enumerate(cv["folds"])]
    rows += [("mean", cv["overall"]), ("OOF", cv["oof"])]
    return "\n".join([header] + [f"{name:<8}" + "".join(f"{r[k]:>10.4f}" for k in KEYS)
                                 for name, r in rows])
