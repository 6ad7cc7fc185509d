"""The DACON four-part Pearson score, cross-validation splitters and honest CV reports.

score = mean(cells, max_gene, heg50, hvg50) where
- cells:    per-spot Pearson r across genes, averaged over spots;
- max_gene: the largest per-gene Pearson r across spots;
- heg50:    mean per-gene r over the 50 genes with the highest total true expression;
- hvg50:    mean per-gene r over the 50 genes with the highest true variance.
A constant row or column has an undefined r; it counts as 0, as on the leaderboard.

The DACON test set is an unseen tissue slice and train rows are stored slice by slice, so the
default splitter holds out contiguous row blocks: a random split puts neighbouring spots of one
slice on both sides and overstates every score. Every choice a CV score depends on (ridge
alpha, blend weights, post-processing) is made without the fold it scores (`nested_choice`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data import warn_every_time

PARTS = ("cells", "max_gene", "heg50", "hvg50")
KEYS = ("score", *PARTS, "mean_gene")


def _moments(a: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Sums and centred (co)variance sums of a and b along `axis`, in a few passes.

    Raw moments are fast; slices whose spread is tiny next to their mean (where raw moments
    lose precision, constant ones included) are redone exactly.
    """
    n = a.shape[axis]
    spec = "ij,ij->j" if axis == 0 else "ij,ij->i"
    sa, sb = a.sum(axis=axis), b.sum(axis=axis)
    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
        raise ValueError("y_true and y_pred must be finite (found NaN or inf)")
    ssa = np.einsum(spec, a, a) - sa * sa / n
    ssb = np.einsum(spec, b, b) - sb * sb / n
    sab = np.einsum(spec, a, b) - sa * sb / n
    shaky = (ssa <= 1e-8 * sa * sa / n) | (ssb <= 1e-8 * sb * sb / n)
    if shaky.any():
        idx = np.flatnonzero(shaky)
        sub_a, sub_b = np.take(a, idx, axis=1 - axis), np.take(b, idx, axis=1 - axis)
        ssa[idx], ssb[idx], sab[idx] = _centered_moments(sub_a, sub_b, axis, spec)
    return sa, ssa, ssb, sab


def _centered_moments(a: np.ndarray, b: np.ndarray, axis: int,
                      spec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact centred sums of squares and cross-products; exactly constant slices get 0."""
    a_constant, b_constant = np.ptp(a, axis=axis) == 0, np.ptp(b, axis=axis) == 0
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (np.where(a_constant, 0.0, np.einsum(spec, a, a)),
            np.where(b_constant, 0.0, np.einsum(spec, b, b)), np.einsum(spec, a, b))


def pearson_from_moments(ssa: np.ndarray, ssb: np.ndarray, sab: np.ndarray) -> np.ndarray:
    """Pearson r from centred sums of squares (ssa, ssb) and cross-products (sab), elementwise;
    undefined (a constant slice: a zero sum of squares) → 0, as on the leaderboard."""
    den = np.sqrt(np.clip(ssa, 0, None) * np.clip(ssb, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, sab / den, 0.0)


def pearson_genes(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-gene (column) Pearson r across spots; constant columns give 0."""
    return pearson_from_moments(*_moments(*_as_pair(y_true, y_pred), axis=0)[1:])




def top_genes(y_true: np.ndarray, n: int = 50) -> dict[str, np.ndarray]:
    """Column indices of the n most expressed (total) and n most variable true genes."""
    y_true = np.asarray(y_true, dtype=np.float64)
    return _rank_genes(y_true.sum(axis=0), y_true.var(axis=0), n)


def _rank_genes(total: np.ndarray, var: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The n genes with the highest total and the n with the highest variance (ties: first)."""
    n = min(n, len(total))
    return {"heg50": np.argsort(-total, kind="stable")[:n],
            "hvg50": np.argsort(-var, kind="stable")[:n]}


def score(y_true: np.ndarray, y_pred: np.ndarray, n_top: int = 50) -> dict[str, float]:
    """Every part of the four-part score, plus the mean per-gene r (`mean_gene`)."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    total, ss_true, ss_pred, ss_cross = _moments(y_true, y_pred, axis=0)
    r_gene = pearson_from_moments(ss_true, ss_pred, ss_cross)
    r_spot = pearson_from_moments(*_moments(y_true, y_pred, axis=1)[1:])
    top = _rank_genes(total, ss_true, n_top)
    parts = {
        "cells": float(r_spot.mean()),
        "max_gene": float(r_gene.max()),
        "heg50": float(r_gene[top["heg50"]].mean()),
        "hvg50": float(r_gene[top["hvg50"]].mean()),
    }
    return {"score": float(np.mean([parts[k] for k in PARTS])), **parts,
            "mean_gene": float(r_gene.mean())}


def max_gene_floor(y_true: np.ndarray, y_pred: np.ndarray, n_shuffles: int = 5,
                   seed: int = 0) -> float:
    """Max per-gene r that row-shuffled predictions reach: what `max_gene` gets from noise."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    rng = np.random.default_rng(seed)
    maxima = [pearson_genes(y_true, y_pred[rng.permutation(len(y_pred))]).max()
              for _ in range(n_shuffles)]
    return float(np.mean(maxima))




def _as_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 2-D of the same shape, or a clear error."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 2-D of one shape (spots, genes); got "
                         f"{y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


# --- slices along row order -------------------------------------------------------------------
# Train rows are stored slice by slice. A slice edge is where the expression of the rows before
# and after differs most; `find_slices` turns that into the `slices` splitter's folds.

SLICE_SIGNAL_PCS = 5  # expression principal components the slice detector follows
SLICE_RATIO = 8.0  # an edge's jump score must be at least this many times the median jump
SLICE_TOLERANCE = 0.1  # an edge lies within this fraction of a slice of the equal-size position
MAX_SLICES = 8


def row_signals(y: np.ndarray, extra: pd.DataFrame | None = None, n_pcs: int = 3,
                seed: int = 0) -> pd.DataFrame:
    """Per train row: total expression, the first principal components of the standardised
    expression, and (if given) extra per-row columns such as the mean colour of its patch
    (`mean_R` → `mean R`)."""
    from sklearn.decomposition import PCA

    y = np.asarray(y, dtype=np.float32)
    z = (y - y.mean(0)) / np.where(y.std(0) > 0, y.std(0), 1)
    n_pcs = min(n_pcs, *z.shape)
    pcs = PCA(n_pcs, svd_solver="randomized", random_state=seed).fit_transform(z)
    frame = pd.DataFrame(pcs, columns=[f"expression PC{i + 1}" for i in range(n_pcs)])
    frame.insert(0, "total expression", y.sum(1))
    for column in [] if extra is None else extra.columns:
        frame[column.replace("_", " ")] = extra[column].to_numpy()
    return frame


def jump_scores(x: np.ndarray, window: int) -> np.ndarray:
    """Per row t: squared distance between the mean of the `window` rows before t and the mean of
    the `window` rows from t on, averaged over standardised columns (NaN near the ends)."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    total = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    scores = np.full(len(x), np.nan)
    t = np.arange(window, len(x) - window + 1)
    before = (total[t] - total[t - window]) / window
    after = (total[t + window] - total[t]) / window
    scores[t] = ((before - after) ** 2).mean(1)
    return scores


def find_change_points(x: np.ndarray, window: int, ratio: float = 6.0,
                       max_points: int = 10) -> list[int]:
    """Rows where the signals jump: peaks of jump_scores at least `ratio` × its median, at least
    `window` rows apart, strongest first (at most max_points), returned in row order."""
    scores = jump_scores(x, window)
    if np.isnan(scores).all():
        return []
    floor = ratio * np.nanmedian(scores)
    picks: list[int] = []
    for row in np.argsort(np.nan_to_num(-scores, nan=np.inf), kind="stable"):
        if len(picks) == max_points or not scores[row] >= floor:
            break
        if all(abs(row - p) >= window for p in picks):
            picks.append(int(row))
    return sorted(picks)


def find_slices(y: np.ndarray, max_slices: int = MAX_SLICES, ratio: float = SLICE_RATIO,
                tolerance: float = SLICE_TOLERANCE, n_pcs: int = SLICE_SIGNAL_PCS) -> dict | None:
    """Slice edges along row order from the expression alone, or None if the rows show none.

    The jump score of row t compares the mean standardised expression (first principal
    components) of the `window` rows before t with the `window` rows from t on. For K slices of
    similar size (Visium capture areas; DACON's 2378/2349/2265), an edge is the highest jump
    within ±tolerance of a slice of the equal-size position j·n/K, and it counts only if its jump
    is at least `ratio` × the median jump. The answer is the largest K ≤ max_slices whose every
    edge counts: shuffled rows have no such edge (None), and a K that halves the true slices
    fails at the middle of a slice.
    """
    n = len(y)
    window = max(10, n // 50)
    if n < 4 * window:
        return None
    scores = jump_scores(row_signals(y, n_pcs=n_pcs).to_numpy(), window)
    relative = np.nan_to_num(scores / np.nanmedian(scores), nan=0.0)
    found = None
    for k in range(2, max_slices + 1):
        size = n / k
        edges = []
        for j in range(1, k):
            low, high = max(int(j * size - tolerance * size), 0), min(int(j * size + tolerance
                                                                          * size) + 1, n)
            edges.append(low + int(np.argmax(relative[low:high])))
        jumps = relative[edges]
        if (jumps >= ratio).all():
            found = {"edges": edges, "jumps": np.round(jumps, 1).tolist()}
    if found is None:
        return None
    bounds = [0, *found["edges"], n]
    return {**found, "window": window, "sizes": np.diff(bounds).tolist(),
            "labels": np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))}


def describe_slices(found: dict | None) -> str:
    """One line on what `find_slices` found."""
    if found is None:
        return "no slice structure along row order"
    return (f"{len(found['sizes'])} slices of {found['sizes']} rows; edges at rows "
            f"{found['edges']} (jumps {found['jumps']} × the median, window {found['window']})")


# --- cross-validation -------------------------------------------------------------------------

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


def _slices(n_rows: int, n_folds: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """One fold per slice: `groups` are the slice labels of `find_slices`."""
    if groups is None or len(groups) != n_rows:
        raise ValueError("the 'slices' splitter needs the slice of every row: use "
                         "split_rows('slices', y, ...) or find_slices(y)['labels']")
    return np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64)


SPLITTERS: dict[str, Callable[..., np.ndarray]] = {
    "slices": _slices, "blocks": _blocks, "random": _random, "groups": _groups,
}


def list_splitters() -> list[str]:
    """Names accepted by `make_folds` (the part of CV before any ':')."""
    return sorted(SPLITTERS)


def split_rows(cv: str, y: np.ndarray, n_folds: int, seed: int = 0,
               groups: Sequence | None = None,
               same_fold: np.ndarray | None = None) -> tuple[np.ndarray, str, str]:
    """Folds for a CV splitter, the splitter actually used and a line saying how they were made.

    `slices` holds out one slice per fold, its edges found by `find_slices`; rows that show no
    slice structure (e.g. shuffled) fall back to N_FOLDS contiguous blocks, with a warning.
    `same_fold` (a label per row, -1 for none; e.g. duplicate patches) keeps rows of one label
    in one fold (see `keep_together`).
    """
    if cv != "slices":
        folds = make_folds(cv, len(y), n_folds, seed, groups, same_fold)
        sizes = np.bincount(folds).tolist()
        note = f"CV={cv!r}: {len(sizes)} folds of {sizes} rows"
    elif (found := find_slices(y)) is not None:
        folds = make_folds("slices", len(y), len(found["sizes"]), seed, found["labels"],
                           same_fold)
        cv, note = "slices", f"CV='slices': {describe_slices(found)}"
    else:
        note = (f"CV='slices': the rows show no slice structure along row order (shuffled "
                f"rows?); falling back to {n_folds} contiguous row blocks. If rows of one slice "
                "are not stored together, this CV is optimistic: neighbouring spots land on both "
                "sides. Give the slices as CV='groups:<file.csv>' if you know them.")
        warn_every_time(note, UserWarning, stacklevel=2)
        folds, cv = make_folds("blocks", len(y), n_folds, seed, same_fold=same_fold), "blocks"
    return folds, cv, note + _together_note(same_fold)


def make_folds(cv: str, n_rows: int, n_folds: int, seed: int = 0,
               groups: Sequence | None = None,
               same_fold: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) for every train row, by splitter name (`slices` and `groups`
    take the label of every row as `groups`); rows sharing a `same_fold` label >= 0 (e.g.
    duplicate patches) end in one fold (`keep_together`)."""
    name = cv.split(":", 1)[0]
    if name not in SPLITTERS:
        raise ValueError(f"unknown CV splitter {cv!r}; choose from {list_splitters()}")
    if not 2 <= n_folds <= n_rows:
        raise ValueError(f"N_FOLDS must be between 2 and the number of rows ({n_rows}); "
                         f"got {n_folds}")
    groups = None if groups is None else np.asarray(groups)
    folds = SPLITTERS[name](n_rows, n_folds, seed, groups)
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


def nested_choice(folds: np.ndarray, held_out_scores: Callable[[list, int], np.ndarray],
                  n_candidates: int) -> tuple[list[int], np.ndarray]:
    """For each outer fold, the candidate whose inner-CV score over the other folds is best
    (`held_out_scores(fit_folds, k)` scores every candidate fitted on fit_folds on fold k);
    plus the outer curve (each candidate fitted without fold k, scored on k, mean over k)."""
    ids = [int(k) for k in np.unique(folds)]
    if n_candidates > 1 and len(ids) < 3:
        raise ValueError(f"choosing among {n_candidates} candidates by nested CV needs at "
                         f"least 3 folds; the runs have {len(ids)} (retrain with N_FOLDS >= 3, "
                         "or give a single SHRINK and POSTPROCESS = [])")
    choices, curve = [], []
    for k in ids:
        others = [j for j in ids if j != k]
        if n_candidates > 1:
            inner = [held_out_scores([i for i in others if i != j], j) for j in others]
            choices.append(int(np.argmax(np.mean(inner, axis=0))))
        else:
            choices.append(0)
        curve.append(held_out_scores(others, k))
    return choices, np.mean(curve, axis=0)
