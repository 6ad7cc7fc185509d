"""Cross-validation: splitters by name, fold reports and nested choice.

The DACON test set is an unseen tissue slice and train rows are stored slice by slice, so the
default splitter holds out one slice per fold (`slices`, found along row order) or contiguous
row blocks: a random split puts neighbouring spots of one slice on both sides and overstates
every score. Every choice a CV score depends on (ridge alpha, blend weights, post-processing)
is made without the fold it scores (`nested_choice`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data import warn_every_time
from utils.metric import KEYS, score
from utils.slices import _slice_edges, describe_slices

# --- cross-validation -------------------------------------------------------------------------

def _blocks(n_rows: int, n_folds: int, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """Contiguous row blocks of (nearly) equal size, in row order."""
    return np.arange(n_rows) * n_folds // n_rows


def _random(n_rows: int, n_folds: int, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """Shuffled rows dealt into folds of (nearly) equal size: optimistic, for comparison."""
    folds = np.empty(n_rows, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n_rows)] = np.arange(n_rows) % n_folds
    return folds


def _from_file(n_rows: int, n_folds: int, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """Your own row groups (e.g. slices) from a file, whole groups per fold, greedily balancing
    fold sizes (largest groups first)."""
    if labels is None or len(labels) != n_rows:
        raise ValueError("the 'file' splitter needs one group label per train row; pass "
                         "CV='file:<CSV file with ID,group>[:<column>]'")
    labels, inverse, counts = np.unique(np.asarray(labels).astype(str), return_inverse=True,
                                        return_counts=True)
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} groups ({', '.join(labels[:10])}) cannot fill "
                         f"{n_folds} folds; lower N_FOLDS to at most {len(labels)}")
    fold_of_group, sizes = np.empty(len(labels), dtype=np.int64), np.zeros(n_folds)
    for g in np.argsort(-counts, kind="stable"):
        fold_of_group[g] = int(np.argmin(sizes))
        sizes[fold_of_group[g]] += counts[g]
    return fold_of_group[inverse]


def _slices(n_rows: int, n_folds: int, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """One fold per slice: `labels` are the slice labels of `find_slices`."""
    if labels is None or len(labels) != n_rows:
        raise ValueError("the 'slices' splitter needs the slice of every row: use "
                         "split_rows('slices', y, ...) or find_slices(y)['labels']")
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)


SPLITTERS: dict[str, Callable[..., np.ndarray]] = {
    "slices": _slices, "blocks": _blocks, "random": _random, "file": _from_file,
}


def list_splitters() -> list[str]:
    """Names accepted by `make_folds` (the part of CV before any ':')."""
    return sorted(SPLITTERS)


def split_rows(cv: str, y: np.ndarray, n_folds: int, seed: int = 0,
               labels: Sequence | None = None,
               same_fold: np.ndarray | None = None) -> tuple[np.ndarray, str, str]:
    """Folds for a CV splitter, the splitter actually used and a line saying how they were made.

    `slices` holds out one slice per fold, its edges found by `find_slices`; rows that show no
    slice structure (e.g. shuffled) fall back to N_FOLDS contiguous blocks, with a warning.
    `same_fold` (a label per row, -1 for none; e.g. duplicate patches) keeps rows of one label
    in one fold (see `keep_together`).
    """
    if cv != "slices":
        folds = make_folds(cv, len(y), n_folds, seed, labels, same_fold)
        sizes = np.bincount(folds).tolist()
        note = f"CV={cv!r}: {len(sizes)} folds of {sizes} rows"
    elif (found := _slice_edges(np.asarray(y)))["edges"]:
        folds = make_folds("slices", len(y), len(found["sizes"]), seed, found["labels"],
                           same_fold)
        cv, note = "slices", f"CV='slices': {describe_slices(found)}"
    else:
        note = (f"CV='slices': {describe_slices(found)} (shuffled rows?); falling back to "
                f"{n_folds} contiguous row blocks. If rows of one slice are not stored together, "
                "this CV is optimistic: neighbouring spots land on both sides. Give the slices "
                "as CV='file:<file.csv>' if you know them.")
        warn_every_time(note, UserWarning, stacklevel=2)
        folds, cv = make_folds("blocks", len(y), n_folds, seed, same_fold=same_fold), "blocks"
    return folds, cv, note + _together_note(same_fold)


def make_folds(cv: str, n_rows: int, n_folds: int, seed: int = 0,
               labels: Sequence | None = None,
               same_fold: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) for every train row, by splitter name (`slices` and `file`
    take the label of every row as `labels`); rows sharing a `same_fold` label >= 0 (e.g.
    duplicate patches) end in one fold (`keep_together`)."""
    name = cv.split(":", 1)[0]
    if name not in SPLITTERS:
        raise ValueError(f"unknown CV splitter {cv!r}; choose from {list_splitters()}")
    if not 2 <= n_folds <= n_rows:
        raise ValueError(f"N_FOLDS must be between 2 and the number of rows ({n_rows}); "
                         f"got {n_folds}")
    labels = None if labels is None else np.asarray(labels)
    folds = SPLITTERS[name](n_rows, n_folds, seed, labels)
    return folds if same_fold is None else keep_together(folds, same_fold)


def keep_together(folds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Folds with every group of rows sharing a label >= 0 moved into one fold: the fold most
    of the group is in (ties: the lower fold). A copy of a validation patch in training would
    let a model recall its targets and flatter the score."""
    folds, labels = np.asarray(folds).copy(), np.asarray(labels)
    if len(labels) != len(folds):
        raise ValueError(f"same_fold has {len(labels)} labels for {len(folds)} rows")
    rows = np.flatnonzero(labels >= 0)
    if not len(rows):
        return folds
    group = np.unique(labels[rows], return_inverse=True)[1]
    counts = np.zeros((group.max() + 1, folds.max() + 1), int)
    np.add.at(counts, (group, folds[rows]), 1)
    folds[rows] = np.argmax(counts, axis=1)[group]
    return folds


def _together_note(same_fold: np.ndarray | None) -> str:
    """What `keep_together` did, for the CV note ("" without groups)."""
    if same_fold is None or not (np.asarray(same_fold) >= 0).any():
        return ""
    labels = np.asarray(same_fold)
    return (f"; {len(np.unique(labels[labels >= 0]))} groups of duplicate rows "
            f"({int((labels >= 0).sum())} rows) kept in one fold each")


def read_fold_file(cv: str, train: pd.DataFrame,
                   data_dir: Path | None = None) -> np.ndarray | None:
    """Group labels for CV='file:<file.csv>[:<column>]' (a CSV with ID and a group column).

    The file is looked up as given, then in the data folder; without a column name the column
    `group`, else the last column, is used. Other splitters need no groups (None).
    """
    if cv.split(":", 1)[0] != "file":
        return None
    spec = cv.partition(":")[2]
    if not spec:
        raise ValueError("CV='file' needs a file: 'file:<file.csv>' or "
                         "'file:<file.csv>:<column>' with an ID column")
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
    """CV report: each fold scored as a whole test set (as the leaderboard scores the unseen
    slice), their mean (`overall`, the headline), their range (`min`, `max`) and the score of
    the pooled out-of-fold predictions (`oof`)."""
    per_fold = [score(y[folds == k], oof[folds == k]) for k in np.unique(folds)]
    overall = {key: float(np.mean([f[key] for f in per_fold])) for key in KEYS}
    return {"splitter": splitter, "n_folds": len(per_fold), "folds": per_fold,
            "overall": overall, "min": {key: min(f[key] for f in per_fold) for key in KEYS},
            "max": {key: max(f[key] for f in per_fold) for key in KEYS}, "oof": score(y, oof)}


def format_cv(cv: dict) -> str:
    """A short table of a CV report: one line per fold (with the epoch its score comes from,
    when a recipe chose one), the mean, the range over folds and the pooled OOF."""
    header = f"CV splitter={cv['splitter']!r} folds={cv['n_folds']}\n" + \
        " " * 8 + "".join(f"{k:>10}" for k in KEYS)
    rows = [(f"fold {i}", f) for i, f in enumerate(cv["folds"])]
    rows += [("mean", cv["overall"])]
    rows += [(name, cv[name]) for name in ("min", "max") if name in cv]
    rows += [("OOF", cv["oof"])]
    lines = [header]
    for name, r in rows:
        chosen = next((f"{k} {r[k]:g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                       for k in ("epoch", "alpha") if k in r), None)
        note = f"  {chosen} ({r['selection']})" if chosen and "selection" in r else ""
        lines.append(f"{name:<8}" + "".join(f"{r[k]:>10.4f}" for k in KEYS) + note)
    return "\n".join(lines)


INNER_BLOCKS = 3  # with 2-fold CV, candidates fitted on rows are chosen by CV over this many
# contiguous blocks of the one other fold


def nested_choice(folds: np.ndarray, held_out_scores: Callable[[list, int], np.ndarray],
                  n_candidates: int) -> tuple[list[int], np.ndarray]:
    """For each outer fold, the candidate whose inner-CV score over the other folds is best
    (`held_out_scores(fit_folds, k)` scores every candidate fitted on fit_folds on fold k);
    plus the outer curve (each candidate fitted without fold k, scored on k, mean over k).

    With 2 folds there is one other fold: each outer fold chooses on it alone (candidates fitted
    and scored on it, `held_out_scores([j], j)`): in-sample for that fold, never the scored one.
    """
    ids = [int(k) for k in np.unique(folds)]
    choices, curve = [], []
    for k in ids:
        others = [j for j in ids if j != k]
        if n_candidates == 1:
            choices.append(0)
        elif len(others) == 1:
            choices.append(int(np.argmax(held_out_scores(others, others[0]))))
        else:
            inner = [held_out_scores([i for i in others if i != j], j) for j in others]
            choices.append(int(np.argmax(np.mean(inner, axis=0))))
        curve.append(held_out_scores(others, k))
    return choices, np.mean(curve, axis=0)


def inner_folds(folds: np.ndarray, k: int) -> np.ndarray:
    """The inner folds for choosing without outer fold k: every other row keeps its fold, or, if
    only one fold is left (2-fold CV), goes to one of INNER_BLOCKS contiguous blocks of it; the
    rows of fold k get -1."""
    folds = np.asarray(folds)
    inner = np.where(folds == k, -1, folds).astype(np.int64)
    rest = np.flatnonzero(folds != k)
    if len(np.unique(folds[rest])) == 1:
        inner[rest] = make_folds("blocks", len(rest), max(2, min(INNER_BLOCKS, len(rest) // 2)))
    return inner


def stopping_rows(folds: np.ndarray, k: int, fraction: float) -> np.ndarray:
    """Rows held out of fold k's training to stop it early and choose its epoch on: the last
    `fraction` of every other fold's rows in row order (a band of each slice; at least 2 rows
    of a fold, and at least 2 left to train on). Never a row of fold k."""
    parts = []
    for j in np.unique(folds):
        rows = np.flatnonzero(folds == j)
        if j != k:
            parts.append(rows[len(rows) - min(max(2, round(fraction * len(rows))),
                                              max(len(rows) - 2, 0)):])
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def nested_choice_on_rows(folds: np.ndarray,
                          held_out_scores: Callable[[np.ndarray, np.ndarray], np.ndarray],
                          n_candidates: int) -> tuple[list[int], np.ndarray]:
    """`nested_choice` for candidates fitted on training rows (ridge alphas, retrieval's k):
    `held_out_scores(fit_rows, held_rows)` (boolean masks) scores every candidate fitted on
    fit_rows on held_rows. Each outer fold chooses by CV over `inner_folds`: the other folds,
    or with 2 folds contiguous blocks of the other one (fitting and scoring on one fold would
    always pick the least regularised candidate)."""
    choices, curve = [], []
    for k in np.unique(folds):
        inner = inner_folds(folds, k)
        if n_candidates == 1:
            choices.append(0)
        else:
            scores = [held_out_scores((inner >= 0) & (inner != j), inner == j)
                      for j in np.unique(inner[inner >= 0])]
            choices.append(int(np.argmax(np.mean(scores, axis=0))))
        curve.append(held_out_scores(folds != k, folds == k))
    return choices, np.mean(curve, axis=0)


def selection_rule(folds: np.ndarray, n_candidates: int, on_rows: bool = False) -> str:
    """How `nested_choice` (or, `on_rows`, `nested_choice_on_rows`) chose for these folds: the
    `selection` that cv.json records beside each fold's choice."""
    if n_candidates == 1:
        return "fixed (one candidate)"
    if len(np.unique(folds)) > 2:
        return "nested"
    return (f"nested (2 folds: CV over {INNER_BLOCKS} blocks of the other fold)" if on_rows
            else "2 folds: chosen on the other fold alone")
