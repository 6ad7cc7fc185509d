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
# Train rows are stored slice by slice. A slice edge is a lasting shift of the expression along
# row order: ruptures' binary segmentation (least-squares cost, i.e. a change of the mean) of the
# standardised expression signals proposes the edges, and an edge counts if the rows just before
# and after it differ far more than neighbouring rows usually do (its jump score). Nothing
# assumes slices of equal size; `find_slices` turns the edges into the `slices` splitter's folds.

SLICE_SIGNAL_PCS = 5  # expression principal components the slice detector follows
SLICE_RATIO = 6.0  # an edge's jump score must be at least this many times the median jump
MIN_SLICE_FRACTION = 1 / 16  # a slice holds at least this fraction of the rows
MAX_SLICES = 8
CHANGE_RATIO = 6.0  # find_change_points' default ratio
MAX_CANDIDATES = 60  # edges binary segmentation proposes before the jump test


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


def _standardised(x: np.ndarray) -> np.ndarray:
    """Columns of x with mean 0 and sd 1 (constant columns: 0), float64."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)


def jump_scores(x: np.ndarray, window: int) -> np.ndarray:
    """Per row t: squared distance between the mean of the `window` rows before t and the mean of
    the `window` rows from t on, averaged over standardised columns (NaN near the ends)."""
    x = _standardised(x)
    total = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    scores = np.full(len(x), np.nan)
    t = np.arange(window, len(x) - window + 1)
    before = (total[t] - total[t - window]) / window
    after = (total[t + window] - total[t]) / window
    scores[t] = ((before - after) ** 2).mean(1)
    return scores


def _segmenter(x: np.ndarray, min_size: int):
    """ruptures' binary segmentation of x with the least-squares cost, its segment costs taken
    from cumulative sums (O(columns) per segment instead of O(rows × columns))."""
    import ruptures as rpt

    class CumulativeL2(rpt.base.BaseCost):
        """Sum of squared deviations from the segment mean, from cumulative sums."""

        model, min_size = "l2", 2

        def fit(self, signal):
            self.signal = np.asarray(signal, dtype=np.float64).reshape(len(signal), -1)
            zero = np.zeros((1, self.signal.shape[1]))
            self.sums = np.vstack([zero, np.cumsum(self.signal, axis=0)])
            self.squares = np.concatenate([[0.0], np.cumsum((self.signal ** 2).sum(1))])
            return self

        def error(self, start, end):
            total = self.sums[end] - self.sums[start]
            return float(self.squares[end] - self.squares[start] - total @ total / (end - start))

    return rpt.Binseg(custom_cost=CumulativeL2(), min_size=min_size, jump=1).fit(x)


def _edge_jump(relative: np.ndarray, edge: int, reach: int = 2) -> float:
    """The largest relative jump score within `reach` rows of an edge."""
    return float(relative[max(edge - reach, 0):edge + reach + 1].max())


def _refine(x: np.ndarray, edges: list[int], reach: int, size: int) -> list[int]:
    """Each edge moved to the best least-squares split (segments of at least `size` rows) of the
    rows within `reach` of it and between its neighbours: over a whole long slice, a slow drift
    can pull binary segmentation's split a few rows off the edge."""
    edges = sorted(edges)
    bounds = [0, *edges, len(x)]
    moved = []
    for i, edge in enumerate(edges):
        low, high = max(bounds[i], edge - reach), min(bounds[i + 2], edge + reach)
        moved.append(_segmenter(x[low:high], size).predict(n_bkps=1)[0] + low
                     if high - low >= 2 * size else edge)
    return moved


def detect_change_points(x: np.ndarray, window: int, ratio: float, max_points: int,
                         min_size: int | None = None) -> dict:
    """Lasting shifts of the signals x (rows, columns) along row order.

    ruptures' binary segmentation (least-squares cost: a change of the mean; segments of at
    least `min_size` rows, default `window`) proposes up to MAX_CANDIDATES edges. An edge counts
    if its jump score (`window` rows before vs after) is at least `ratio` × the median jump; the
    strongest that count are kept (at most max_points), each then moved to the best split
    within `min_size` rows. Returns the edges in row order, their jumps (× the median) and the
    strongest jump among the candidates not kept (`rejected`): how clear-cut the answer is.
    """
    x = _standardised(x)
    n, min_size = len(x), max(min_size or window, window, 2)
    found = {"edges": [], "jumps": [], "rejected": 0.0}
    n_bkps = min(MAX_CANDIDATES, n // min_size - 1)
    scores = jump_scores(x, window) if n >= 2 * window else np.full(n, np.nan)
    if n_bkps < 1 or max_points < 1 or np.isnan(scores).all() or not np.nanmedian(scores) > 0:
        return found
    relative = np.nan_to_num(scores / np.nanmedian(scores), nan=0.0)
    candidates = _segmenter(x, min_size).predict(n_bkps=n_bkps)[:-1]
    jumps = {e: _edge_jump(relative, e) for e in candidates}
    kept: list[int] = []
    for edge in sorted(candidates, key=lambda e: -jumps[e]):
        if jumps[edge] < ratio or len(kept) == max_points:
            break
        if min(edge, n - edge, *(abs(edge - k) for k in kept)) >= min_size:
            kept.append(edge)
    rejected = [jumps[e] for e in candidates if e not in kept]
    edges = _refine(x, kept, min_size, max(2, window // 2))
    return {"edges": [int(e) for e in edges],
            "jumps": [round(_edge_jump(relative, e), 1) for e in edges],
            "rejected": round(max(rejected, default=0.0), 1)}


def find_change_points(x: np.ndarray, window: int, ratio: float = CHANGE_RATIO,
                       max_points: int = 10) -> list[int]:
    """Rows where the signals shift (`detect_change_points`: segments at least `window` rows
    long, jumps at least `ratio` × the median, at most max_points), in row order."""
    return detect_change_points(x, window, ratio, max_points)["edges"]


def find_slices(y: np.ndarray, max_slices: int = MAX_SLICES, ratio: float = SLICE_RATIO,
                min_fraction: float = MIN_SLICE_FRACTION, n_pcs: int = SLICE_SIGNAL_PCS,
                verbose: bool = True) -> dict | None:
    """Slice edges along row order from the expression alone, or None if the rows show none.

    The signals are the total expression and the first principal components of the standardised
    expression; `detect_change_points` finds their lasting shifts, every slice at least
    `min_fraction` of the rows (so a small region at a slice's end is not taken for a slice) and
    every edge's jump at least `ratio` × the median jump of neighbouring windows (window n/50).
    Slices may differ in size. Shuffled rows have no such edge (None). Prints (`verbose`) what
    it found and how sure it is: each edge's jump against `ratio`, the strongest it rejected.
    """
    found = _slice_edges(np.asarray(y), max_slices, ratio, min_fraction, n_pcs)
    if verbose:
        print(f"find_slices: {describe_slices(found)}", flush=True)
    return found if found["edges"] else None


def _slice_edges(y: np.ndarray, max_slices: int = MAX_SLICES, ratio: float = SLICE_RATIO,
                 min_fraction: float = MIN_SLICE_FRACTION,
                 n_pcs: int = SLICE_SIGNAL_PCS) -> dict:
    """find_slices' answer, with no edges (and the strongest rejected jump) when it finds none."""
    n = len(y)
    window = max(10, n // 50)
    found = {"edges": [], "jumps": [], "rejected": 0.0}
    if n >= 4 * window:
        min_size = max(window, int(np.ceil(min_fraction * n)))
        found = detect_change_points(row_signals(y, n_pcs=n_pcs).to_numpy(), window, ratio,
                                     max_slices - 1, min_size)
    bounds = [0, *found["edges"], n]
    return {**found, "ratio": ratio, "window": window, "sizes": np.diff(bounds).tolist(),
            "labels": np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))}


def describe_slices(found: dict | None) -> str:
    """One line on what `find_slices` found and how sure it is."""
    ratio = SLICE_RATIO if found is None else found.get("ratio", SLICE_RATIO)
    if found is None or not found["edges"]:
        strongest = "" if found is None else f" (strongest jump {found['rejected']} × the median"
        return ("no slice structure along row order" + strongest
                + (f", an edge needs {ratio:g})" if strongest else ""))
    return (f"{len(found['sizes'])} slices of {found['sizes']} rows; edges at rows "
            f"{found['edges']} (jumps {found['jumps']} × the median, window {found['window']}; "
            f"an edge needs {ratio:g}, the weakest has {min(found['jumps']) / ratio:.1f}× that; "
            f"strongest rejected {found['rejected']})")


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
