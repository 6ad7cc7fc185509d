"""Blend runs with weights fitted on their out-of-fold predictions, and score the blend honestly.

Weights are non-negative and sum to one: one set for all genes (`global`), one per gene group
(`group`) or one per gene (`gene`); `mean` is the plain average. Candidates come from a regular
simplex grid and every candidate is scored in closed form from per-fold covariances, so fitting
needs no optimiser and no loop over genes. Global weights maximise the official score itself;
group and gene weights maximise the mean per-gene Pearson r of their genes (what the metric's
gene parts average; the cells part couples all genes, so it is judged on held-out folds). The
fitted weights are shrunk towards equal weights by an amount chosen by CV.

Nested CV keeps the printed score honest: the weights that predict fold k are fitted on the other
folds only, with the shrinkage chosen by an inner CV among those folds; each fold is then scored
as a whole test set, exactly as `utils.cv.score_folds` reports single runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.cv import score_folds
from utils.metric import KEYS, PARTS, top_genes
from utils.runs import Run

BLENDS = ("mean", "global", "group", "gene")
SEED_WEIGHTS = (0.6, 0.2, 0.2)  # the seed team's fixed blend of their three models
MAX_GRID = 1000  # most weight vectors tried per unit; the grid gets coarser with more runs


def stack_predictions(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """The runs' OOF (runs, train, genes) and test (runs, test, genes) predictions, float32."""
    if not runs:
        raise ValueError("no runs to blend: RUNS is empty and none were found under RUNS_ROOT")
    return (np.stack([run.oof for run in runs]).astype(np.float32, copy=False),
            np.stack([run.test_pred for run in runs]).astype(np.float32, copy=False))


def simplex_grid(n_runs: int, max_points: int = MAX_GRID) -> np.ndarray:
    """All weight vectors with entries i/m summing to one (m as fine as max_points allows)."""
    if n_runs == 1:
        return np.ones((1, 1))
    m = next((m for m in (100, 50, 20, 10, 5, 4, 2) if
              math.comb(m + n_runs - 1, n_runs - 1) <= max_points), 1)
    bars = np.array(list(itertools.combinations(range(m + n_runs - 1), n_runs - 1)),
                    dtype=np.int64).reshape(-1, n_runs - 1)  # stars and bars
    edges = np.hstack([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), m + n_runs - 1)])
    return (np.diff(edges, axis=1) - 1) / m


def gene_units(mode: str, genes: Sequence[str],
               groups: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Which weight set each gene uses (unit index per gene) and the units' names."""
    if mode in ("mean", "global"):
        return np.zeros(len(genes), dtype=np.int64), ["all genes"]
    if mode == "gene":
        return np.arange(len(genes)), list(genes)
    if mode != "group":
        raise ValueError(f"BLEND={mode!r} is unknown; choose from {BLENDS}")
    if not groups:
        raise ValueError("BLEND='group' needs gene groups (GENE_GROUPS and GROUPS)")
    unit = np.full(len(genes), -1)
    for u, index in enumerate(groups.values()):
        unit[index] = u
    if (unit < 0).any():
        raise ValueError(f"{int((unit < 0).sum())} genes are in no group, e.g. "
                         f"{[genes[i] for i in np.flatnonzero(unit < 0)[:5]]}")
    return unit, list(groups)


def blend(preds: np.ndarray, weights: np.ndarray, unit_of_gene: np.ndarray) -> np.ndarray:
    """Weighted sum over runs: preds (runs, rows, genes), weights (runs, units) → (rows, genes)."""
    per_gene = np.asarray(weights, dtype=np.float32)[:, unit_of_gene]
    return np.einsum("rg,rng->ng", per_gene, preds).astype(np.float32)


def _centred(a: np.ndarray, axis: int) -> np.ndarray:
    """a minus its mean along axis, in float64; exactly constant slices become exactly 0."""
    a = np.array(a, dtype=np.float64)
    a -= a.mean(axis=axis, keepdims=True)
    constant = a.max(axis=axis, keepdims=True) == a.min(axis=axis, keepdims=True)
    if constant.any():
        a *= ~constant
    return a


def _moments(y: np.ndarray, preds: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Centred sums per gene (axis 0, over spots) or per spot (axis 1, over genes):
    run×run (X, R, R), run×truth (X, R) and truth×truth (X,)."""
    yc, pc = _centred(y, axis), _centred(preds, axis + 1)
    spec = "ng,ng->g" if axis == 0 else "ng,ng->n"
    pp = np.empty((yc.shape[1 - axis], len(pc), len(pc)))
    for r, s in itertools.combinations_with_replacement(range(len(pc)), 2):  # runs, not genes
        pp[:, r, s] = pp[:, s, r] = np.einsum(spec, pc[r], pc[s])
    py = np.stack([np.einsum(spec, p, yc) for p in pc], axis=-1)
    return pp, py, np.einsum(spec, yc, yc)


def _grid_r(grid: np.ndarray, pp: np.ndarray, py: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Pearson r (K, X) of every weighting in grid (K, R) on every slice; undefined → 0."""
    quad = np.einsum("kr,xrs,ks->kx", grid, pp, grid, optimize=True)
    den = np.sqrt(np.clip(quad, 0, None) * np.clip(yy, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (grid @ py.T) / den, 0.0)


def score_grid(y: np.ndarray, preds: np.ndarray, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Every part of the official score of each global weighting in grid (K, R), closed form."""
    r_gene = _grid_r(grid, *_moments(y, preds, axis=0))
    r_spot = _grid_r(grid, *_moments(y, preds, axis=1))
    top = top_genes(y)
    parts = {"cells": r_spot.mean(axis=1), "max_gene": r_gene.max(axis=1),
             "heg50": r_gene[:, top["heg50"]].mean(axis=1),
             "hvg50": r_gene[:, top["hvg50"]].mean(axis=1)}
    return {"score": np.mean([parts[k] for k in PARTS], axis=0), **parts,
            "mean_gene": r_gene.mean(axis=1)}


def _unit_mean(values: np.ndarray, unit_of_gene: np.ndarray) -> np.ndarray:
    """Mean of (K, genes) values over the genes of each unit → (K, units)."""
    order = np.argsort(unit_of_gene, kind="stable")
    counts = np.bincount(unit_of_gene)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(values[:, order], starts, axis=1) / counts


def objective_tables(y: np.ndarray, preds: np.ndarray, folds: np.ndarray, grid: np.ndarray,
                     mode: str, unit_of_gene: np.ndarray) -> dict[int, np.ndarray]:
    """Per fold, the objective (K, units) of every grid weighting: the official score for
    global weights, else the mean per-gene r over each unit's genes."""
    tables = {}
    for k in np.unique(folds):
        rows = folds == k
        if mode in ("mean", "global"):
            tables[k] = score_grid(y[rows], preds[:, rows], grid)["score"][:, None]
        else:
            r_gene = _grid_r(grid, *_moments(y[rows], preds[:, rows], axis=0))
            tables[k] = _unit_mean(r_gene, unit_of_gene)
    return tables


def fit_weights(tables: dict[int, np.ndarray], fit_folds: Sequence[int],
                grid: np.ndarray) -> np.ndarray:
    """Weights (runs, units) maximising the objective averaged over fit_folds; ties go to the
    candidate nearest equal weights."""
    objective = np.mean([tables[k] for k in fit_folds], axis=0)
    distance = ((grid - 1 / grid.shape[1]) ** 2).sum(axis=1)[:, None]
    return grid[np.argmax(objective - 1e-9 * distance, axis=0)].T


def shrink_weights(weights: np.ndarray, amount: float) -> np.ndarray:
    """Move weights towards equal weights: 0 keeps them, 1 gives the plain mean."""
    return (1 - amount) * weights + amount / weights.shape[0]


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


@dataclass
class BlendResult:
    """A fitted blend: test weights, the honest nested-CV report and its OOF predictions."""

    mode: str
    units: list[str]
    unit_of_gene: np.ndarray
    weights: np.ndarray  # (runs, units), fitted on all folds: used for the test predictions
    shrink: float  # chosen by the outer CV curve, used with `weights`
    fold_shrinks: list[float]  # per outer fold, chosen by inner CV on the other folds
    fitted_on: list[list[int]]  # per outer fold, the folds its weights were fitted on
    shrink_curve: dict[str, list[float]]
    oof: np.ndarray  # nested: fold k blended with weights fitted without fold k
    test_pred: np.ndarray
    cv: dict


def cv_blend(y: np.ndarray, oof: np.ndarray, test: np.ndarray, folds: np.ndarray, mode: str,
             unit_of_gene: np.ndarray, units: list[str], shrinks: Sequence[float] = (0.0, 0.5),
             splitter: str = "blocks") -> BlendResult:
    """Fit blend weights on OOF predictions with nested CV (see the module docstring)."""
    n_runs = oof.shape[0]
    grid = np.full((1, n_runs), 1 / n_runs) if mode == "mean" else simplex_grid(n_runs)
    shrinks = (1.0,) if mode == "mean" else tuple(float(s) for s in shrinks)
    tables = objective_tables(y, oof, folds, grid, mode, unit_of_gene)
    towards_mean = np.array([[1 - s, s] for s in shrinks])

    def held_out_scores(fit_folds: list, k: int) -> np.ndarray:
        # blends are linear in the weights: shrinking by s mixes the fitted blend with the mean
        rows = folds == k
        part = oof[:, rows]
        fitted = blend(part, fit_weights(tables, fit_folds, grid), unit_of_gene)
        basis = np.stack([fitted, part.mean(axis=0)])
        return score_grid(y[rows], basis, towards_mean)["score"]

    choices, curve = nested_choice(folds, held_out_scores, len(shrinks))
    nested, fitted_on = np.empty(y.shape, dtype=np.float32), []
    for k, choice in zip(np.unique(folds), choices):
        others = [int(j) for j in np.unique(folds) if j != k]
        weights = shrink_weights(fit_weights(tables, others, grid), shrinks[choice])
        nested[folds == k] = blend(oof[:, folds == k], weights, unit_of_gene)
        fitted_on.append(others)
    shrink = shrinks[int(np.argmax(curve))]
    weights = shrink_weights(fit_weights(tables, list(tables), grid), shrink)
    return BlendResult(mode, units, unit_of_gene, weights, shrink,
                       [shrinks[c] for c in choices], fitted_on,
                       {"shrink": list(shrinks), "score": curve.tolist()}, nested,
                       blend(test, weights, unit_of_gene), score_folds(y, nested, folds, splitter))


def fixed_blend_cv(y: np.ndarray, oof: np.ndarray, folds: np.ndarray, weights: Sequence[float],
                   splitter: str) -> dict:
    """CV report of a blend with fixed global weights (nothing fitted, so nothing to nest)."""
    weights = np.asarray(weights, dtype=np.float64)[:, None]
    return score_folds(y, blend(oof, weights, np.zeros(oof.shape[2], dtype=np.int64)), folds,
                       splitter)


def comparison_cvs(y: np.ndarray, oof: np.ndarray, folds: np.ndarray, names: Sequence[str],
                   splitter: str) -> dict[str, dict]:
    """CV reports, scored the same way, of each run alone, the plain mean and (for exactly three
    runs, in the listed order) the seed team's fixed 0.6/0.2/0.2."""
    cvs = {name: score_folds(y, oof[i], folds, splitter) for i, name in enumerate(names)}
    cvs["mean"] = fixed_blend_cv(y, oof, folds, np.full(len(names), 1 / len(names)), splitter)
    if len(names) == len(SEED_WEIGHTS):
        cvs["seed 0.6/0.2/0.2"] = fixed_blend_cv(y, oof, folds, SEED_WEIGHTS, splitter)
    return cvs


def cv_table(cvs: dict[str, dict]):
    """One row per CV report: every part (mean over folds), the pooled-OOF score, splitter."""
    rows = [{"": name, **cv["overall"], "oof_score": cv["oof"]["score"],
             "splitter": cv["splitter"], "folds": cv["n_folds"]} for name, cv in cvs.items()]
    return pd.DataFrame(rows).set_index("")[[*KEYS, "oof_score", "splitter", "folds"]]


def weights_table(result: BlendResult, names: Sequence[str]):
    """The test weights: one row per unit (all genes, a group or a gene), one column per run."""
    return pd.DataFrame(result.weights.T, index=pd.Index(result.units, name="unit"),
                        columns=list(names))


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A short unique label per run: its folder name, with the parent folder if names repeat."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.path.parent.name}/{run.name}" for run in runs]


def plot_weights(weights: pd.DataFrame):
    """The fitted weights: bars per unit for a few units, else a histogram per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    if len(weights) <= 30:
        weights.plot.bar(stacked=True, ax=ax, width=0.8)
        ax.set(ylabel="weight", xlabel="", title="blend weights per unit")
    else:
        ax.hist(weights.to_numpy(), bins=np.linspace(0, 1, 21), label=list(weights.columns))
        ax.set(xlabel="weight", ylabel=f"{weights.index.name}s",
               title=f"blend weights over {len(weights)} {weights.index.name}s")
    ax.legend(fontsize="small")
    return fig
