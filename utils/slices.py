"""Tissue slices along row order: change points of the expression (and any extra signal).

Train rows are stored slice by slice. A slice edge is a lasting shift of the expression along
row order: ruptures' binary segmentation (least-squares cost, i.e. a change of the mean) of the
standardised expression signals proposes the edges, and an edge counts if the rows just before
and after it differ far more than neighbouring rows usually do (its jump score). Nothing
assumes slices of equal size; `find_slices` turns the edges into the `slices` splitter's folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
