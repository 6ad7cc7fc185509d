"""07_ensemble_submit: blend runs with weights fitted on their out-of-fold predictions, score the
blend honestly, post-process, and keep it only if it beats its members (the audit and the
submission file are `utils.submit`).

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

Post-processing steps (each fitted on train rows only):
- `shrink_to_mean`: per gene, pull predictions towards the train mean by the least-squares
  slope of truth on prediction (in (0, 1]). Per-gene r is unchanged; the per-spot profile
  across genes (the metric's `cells` part) is what moves.
- `clip`: per gene, clip predictions to the train range (a column it would flatten is left as is).
Which steps to use, none included, is chosen for each fold on the other folds (nested CV on the
blended OOF predictions); the test predictions get the steps best over all folds, and only if the
nested score beats the blend without them.

With 2 folds each nested choice (shrinkage, steps, blend or member) is made on the one other fold
alone: in-sample for it, never on the fold it scores; the reports say so (`selection`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.choices import BLENDS, POSTPROCESS_STEPS
from utils.cv import nested_choice, score_folds, selection_rule
from utils.data import KitData
from utils.genes import LABEL_FREE, groups_on_rows, load_gene_groups, read_grouping_settings
from utils.metric import KEYS, PARTS, pearson_from_moments, score, top_genes
from utils.runs import Run

SEED_WEIGHTS = (0.6, 0.2, 0.2)  # the DACON winners' fixed blend of their three models
MAX_GRID = 1000  # most weight vectors tried per weight set; the grid gets coarser with more runs


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


def weight_sets(mode: str, genes: Sequence[str],
               groups: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Which weight set each gene uses (its index per gene) and the sets' names."""
    if mode in ("mean", "global"):
        return np.zeros(len(genes), dtype=np.int64), ["all genes"]
    if mode == "gene":
        return np.arange(len(genes)), list(genes)
    if mode != "group":
        raise ValueError(f"BLEND={mode!r} is unknown; choose from {BLENDS}")
    if not groups:
        raise ValueError("BLEND='group' needs gene groups (GENE_GROUPS and GROUPS)")
    set_of = np.full(len(genes), -1)
    for u, index in enumerate(groups.values()):
        set_of[index] = u
    if (set_of < 0).any():
        raise ValueError(f"{int((set_of < 0).sum())} genes are in no group, e.g. "
                         f"{[genes[i] for i in np.flatnonzero(set_of < 0)[:5]]}")
    return set_of, list(groups)


def blend_sets(mode: str, genes: Sequence[str], y: np.ndarray, folds: np.ndarray,
               gene_groups: str | None = None, strategy: str | None = None,
               ) -> tuple[np.ndarray, list[str], dict[int, np.ndarray] | None]:
    """The weight sets of BLEND `mode`: (set of every gene, set names, per-fold sets or None).

    For BLEND="group" with a strategy that reads the targets (kmeans, correlation, functional),
    the groups are also refitted without each fold's rows (with the settings 02 wrote beside
    GENE_GROUPS), so that no fold's blend score rests on groups made from its own targets; the
    sets of all rows serve the test predictions.
    """
    if mode != "group":
        return (*weight_sets(mode, genes), None)
    groups = load_gene_groups(gene_groups, list(genes), strategy) if gene_groups else None
    set_of_gene, names = weight_sets(mode, genes, groups)
    if strategy in LABEL_FREE:
        return set_of_gene, names, None
    settings = read_grouping_settings(gene_groups, strategy)
    fold_sets = {int(k): weight_sets(mode, genes, groups_on_rows(settings, strategy, genes,
                                                                  y[folds != k]))[0]
                 for k in np.unique(folds)}
    return set_of_gene, names, fold_sets


def blend(preds: np.ndarray, weights: np.ndarray, set_of_gene: np.ndarray) -> np.ndarray:
    """Weighted sum over runs: preds (runs, rows, genes), weights (runs, sets) → (rows, genes)."""
    per_gene = np.asarray(weights, dtype=np.float32)[:, set_of_gene]
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
    return pearson_from_moments(quad, yy, grid @ py.T)


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


def _set_mean(values: np.ndarray, set_of_gene: np.ndarray) -> np.ndarray:
    """Mean of (K, genes) values over the genes of each weight set → (K, sets)."""
    order = np.argsort(set_of_gene, kind="stable")
    counts = np.bincount(set_of_gene)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(values[:, order], starts, axis=1) / counts


def objective_tables(y: np.ndarray, preds: np.ndarray, folds: np.ndarray, grid: np.ndarray,
                     mode: str, set_of_gene: np.ndarray) -> dict[int, np.ndarray]:
    """Per fold, the objective (K, sets) of every grid weighting: the official score for
    global weights, else the mean per-gene r over each weight set's genes."""
    tables = {}
    for k in np.unique(folds):
        rows = folds == k
        if mode in ("mean", "global"):
            tables[k] = score_grid(y[rows], preds[:, rows], grid)["score"][:, None]
        else:
            r_gene = _grid_r(grid, *_moments(y[rows], preds[:, rows], axis=0))
            tables[k] = _set_mean(r_gene, set_of_gene)
    return tables


def fit_weights(tables: dict[int, np.ndarray], fit_folds: Sequence[int],
                grid: np.ndarray) -> np.ndarray:
    """Weights (runs, sets) maximising the objective averaged over fit_folds; ties go to the
    candidate nearest equal weights."""
    objective = np.mean([tables[k] for k in fit_folds], axis=0)
    distance = ((grid - 1 / grid.shape[1]) ** 2).sum(axis=1)[:, None]
    return grid[np.argmax(objective - 1e-9 * distance, axis=0)].T


def shrink_weights(weights: np.ndarray, amount: float) -> np.ndarray:
    """Move weights towards equal weights: 0 keeps them, 1 gives the plain mean."""
    return (1 - amount) * weights + amount / weights.shape[0]




@dataclass
class BlendResult:
    """A fitted blend: test weights, the honest nested-CV report and its OOF predictions."""

    mode: str
    sets: list[str]  # weight sets: all genes, each gene group or each gene
    set_of_gene: np.ndarray
    weights: np.ndarray  # (runs, sets), fitted on all folds: used for the test predictions
    shrink: float  # chosen by the outer CV curve, used with `weights`
    fold_shrinks: list[float]  # per outer fold, chosen by inner CV on the other folds
    fitted_on: list[list[int]]  # per outer fold, the folds its weights were fitted on
    shrink_curve: dict[str, list[float]]
    oof: np.ndarray  # nested: fold k blended with weights fitted without fold k
    test_pred: np.ndarray
    cv: dict
    # outer fold k → every row as the steps after the blend may see it when choosing for fold k:
    # fold j ≠ k blended with weights fitted without j and k (2 folds: on j), fold k as `oof`
    inner_oof: dict[int, np.ndarray] = field(default_factory=dict)


def inner_blends(oof: np.ndarray, folds: np.ndarray, nested: np.ndarray,
                 weights_for) -> dict[int, np.ndarray]:
    """Per outer fold k, the blend of every other fold j with weights fitted on the folds
    other than j and k (`weights_for(k, fit_folds)`; with 2 folds on j alone), none of which
    read fold k's labels; fold k's own rows are its nested blend."""
    ids = [int(k) for k in np.unique(folds)]
    inner = {}
    for k in ids:
        rows = nested.copy()
        for j in (j for j in ids if j != k):
            fit = [i for i in ids if i not in (j, k)] or [j]
            weights, assign = weights_for(k, fit)
            rows[folds == j] = blend(oof[:, folds == j], weights, assign)
        inner[k] = rows
    return inner


def cv_blend(y: np.ndarray, oof: np.ndarray, test: np.ndarray, folds: np.ndarray, mode: str,
             set_of_gene: np.ndarray, sets: list[str], shrinks: Sequence[float] = (0.0, 0.5),
             splitter: str = "blocks",
             fold_sets: dict[int, np.ndarray] | None = None) -> BlendResult:
    """Fit blend weights on OOF predictions with nested CV (see the module docstring).

    `fold_sets` (fold → weight set of every gene, made without that fold's rows) keeps weight
    sets from gene groups that read the targets out of the fold they score: fold k is blended
    with weights fitted per the groups made without it. None: `set_of_gene` for every fold.
    """
    n_runs, ids = oof.shape[0], [int(k) for k in np.unique(folds)]
    grid = np.full((1, n_runs), 1 / n_runs) if mode == "mean" else simplex_grid(n_runs)
    shrinks = (1.0,) if mode == "mean" else tuple(float(s) for s in shrinks)
    towards_mean = np.array([[1 - s, s] for s in shrinks])
    sets_without = fold_sets or {}
    cache: dict[int | None, dict] = {}

    def tables_for(outer: int | None) -> tuple[dict, np.ndarray]:
        """Objective tables and weight sets of the groups made without fold `outer`."""
        assign = sets_without.get(outer, set_of_gene)
        key = outer if outer in sets_without else None
        if key not in cache:
            cache[key] = objective_tables(y, oof, folds, grid, mode, assign)
        return cache[key], assign

    def held_out_scores(fit_folds: list, k: int) -> np.ndarray:
        # the outer fold is the one left out of (fit, held), or the held fold itself
        outer = (set(ids) - set(fit_folds) - {k}) or {k}
        tables, assign = tables_for(outer.pop())
        # blends are linear in the weights: shrinking by s mixes the fitted blend with the mean
        rows = folds == k
        part = oof[:, rows]
        fitted = blend(part, fit_weights(tables, fit_folds, grid), assign)
        basis = np.stack([fitted, part.mean(axis=0)])
        return score_grid(y[rows], basis, towards_mean)["score"]

    choices, curve = nested_choice(folds, held_out_scores, len(shrinks))
    fold_shrinks = dict(zip(ids, (shrinks[c] for c in choices)))

    def weights_for(k: int, fit_folds: list) -> tuple[np.ndarray, np.ndarray]:
        """Fold k's shrinkage and weight sets, the weights fitted on fit_folds."""
        tables, assign = tables_for(k)
        return shrink_weights(fit_weights(tables, fit_folds, grid), fold_shrinks[k]), assign

    nested, fitted_on = np.empty(y.shape, dtype=np.float32), []
    for k in ids:
        others = [j for j in ids if j != k]
        nested[folds == k] = blend(oof[:, folds == k], *weights_for(k, others))
        fitted_on.append(others)
    tables, _ = tables_for(None)
    shrink = shrinks[int(np.argmax(curve))]
    weights = shrink_weights(fit_weights(tables, ids, grid), shrink)
    cv = score_folds(y, nested, folds, splitter)
    for parts, k in zip(cv["folds"], ids):
        parts.update(shrink=fold_shrinks[k], selection=selection_rule(folds, len(shrinks)))
    return BlendResult(mode, sets, set_of_gene, weights, shrink, list(fold_shrinks.values()),
                       fitted_on, {"shrink": list(shrinks), "score": curve.tolist()}, nested,
                       blend(test, weights, set_of_gene), cv,
                       inner_blends(oof, folds, nested, weights_for))


def fixed_blend_cv(y: np.ndarray, oof: np.ndarray, folds: np.ndarray, weights: Sequence[float],
                   splitter: str) -> dict:
    """CV report of a blend with fixed global weights (nothing fitted, so nothing to nest)."""
    weights = np.asarray(weights, dtype=np.float64)[:, None]
    return score_folds(y, blend(oof, weights, np.zeros(oof.shape[2], dtype=np.int64)), folds,
                       splitter)


def comparison_cvs(y: np.ndarray, oof: np.ndarray, folds: np.ndarray, names: Sequence[str],
                   splitter: str) -> dict[str, dict]:
    """CV reports, scored the same way, of each run alone, the plain mean and (for exactly three
    runs, in the listed order) the DACON winners' fixed 0.6/0.2/0.2."""
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
    """The test weights: one row per weight set (all genes, a group, a gene), a column per run."""
    return pd.DataFrame(result.weights.T, index=pd.Index(result.sets, name="weight set"),
                        columns=list(names))


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A short unique label per run: its folder name, with the parent folder if names repeat."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.path.parent.name}/{run.name}" for run in runs]


def plot_weights(weights: pd.DataFrame):
    """The fitted weights: bars per weight set for a few sets, else a histogram per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    if len(weights) <= 30:
        weights.plot.bar(stacked=True, ax=ax, width=0.8)
        ax.set(ylabel="weight", xlabel="", title="blend weights per weight set")
    else:
        ax.hist(weights.to_numpy(), bins=np.linspace(0, 1, 21), label=list(weights.columns))
        ax.set(xlabel="weight", ylabel=f"{weights.index.name}s",
               title=f"blend weights over {len(weights)} {weights.index.name}s")
    ax.legend(fontsize="small")
    return fig


# --- post-processing and audit --------------------------------------------------------------

STEPS = POSTPROCESS_STEPS
MIN_SLOPE = 0.05  # a gene the model gets backwards keeps a little spread instead of going flat
MIN_GAIN = 1e-4  # score a step must add on held-out folds to be chosen (ties go to fewer steps)


def list_steps() -> list[str]:
    """Names accepted by POSTPROCESS."""
    return list(STEPS)


def postprocess_stats(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene sums that fit_postprocess needs; sums of several row sets add up."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return {"n": np.float64(len(y)), "y": y.sum(axis=0), "p": pred.sum(axis=0),
            "pp": np.einsum("ng,ng->g", pred, pred), "py": np.einsum("ng,ng->g", pred, y),
            "low": y.min(axis=0), "high": y.max(axis=0)}


def combine_stats(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The stats of the union of row sets."""
    out = {key: np.sum([p[key] for p in parts], axis=0) for key in ("n", "y", "p", "pp", "py")}
    return {**out, "low": np.min([p["low"] for p in parts], axis=0),
            "high": np.max([p["high"] for p in parts], axis=0)}


def fit_postprocess(y: np.ndarray | None = None, pred: np.ndarray | None = None,
                    stats: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per gene: train mean, shrinkage slope towards it, and train range (from y and pred, or
    from their stats)."""
    stats = postprocess_stats(y, pred) if stats is None else stats
    n = stats["n"]
    var = stats["pp"] - stats["p"] ** 2 / n
    cov = stats["py"] - stats["p"] * stats["y"] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(var > 1e-12 * stats["pp"], cov / var, 1.0)
    return {"mean": stats["y"] / n, "slope": np.clip(slope, MIN_SLOPE, 1.0),
            "low": stats["low"], "high": stats["high"]}


def apply_postprocess(pred: np.ndarray, params: dict[str, np.ndarray],
                      steps: Sequence[str]) -> np.ndarray:
    """The predictions after the given steps, in STEPS order."""
    out = np.asarray(pred, dtype=np.float64)
    if "shrink_to_mean" in steps:
        out = params["mean"] + params["slope"] * (out - params["mean"])
    if "clip" in steps:
        clipped = np.clip(out, params["low"], params["high"])
        flattened = (np.ptp(clipped, axis=0) == 0) & (np.ptp(out, axis=0) > 0)
        out = np.where(flattened, out, clipped)
    return out.astype(np.float32)


def step_candidates(steps: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of the allowed steps, starting with none."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"POSTPROCESS has unknown steps {unknown}; choose from {list(STEPS)}")
    allowed = [s for s in STEPS if s in steps]
    return [c for n in range(len(allowed) + 1) for c in itertools.combinations(allowed, n)]


@dataclass
class PostResult:
    """Post-processing chosen by nested CV, and whether it is applied to the test predictions."""

    steps: tuple[str, ...]  # applied to the test predictions ((): none)
    fold_steps: list[tuple[str, ...]]  # per outer fold, chosen on the other folds ((): none)
    curve: dict[str, float]  # each candidate fitted without fold k, scored on k, mean over k
    oof: np.ndarray  # nested: fold k post-processed as chosen and fitted without fold k
    test_pred: np.ndarray
    cv: dict
    gain: float  # nested score minus the score without post-processing
    # outer fold k → every row post-processed without reading fold k's labels (keep_best's view)
    inner_oof: dict[int, np.ndarray] = field(default_factory=dict)


def cv_postprocess(y: np.ndarray, oof: np.ndarray, test: np.ndarray, folds: np.ndarray,
                   steps: Sequence[str], baseline: dict, splitter: str = "blocks",
                   inner_oof: dict[int, np.ndarray] | None = None) -> PostResult:
    """Choose post-processing steps by nested CV (each step must add MIN_GAIN on held-out
    folds). Whether fold k is post-processed at all, and how, is decided on the other folds
    only (no steps is a candidate), on predictions that never read fold k's labels:
    `inner_oof[k]` (a blend's `BlendResult.inner_oof`; None: `oof` is such, e.g. one run's).
    The test predictions get the steps best over all folds, fitted on `oof`, and only if the
    nested score beats `baseline` (the predictions without post-processing)."""
    candidates = step_candidates(steps)
    ids = [int(k) for k in np.unique(folds)]
    inner = inner_oof or dict.fromkeys(ids, oof)
    stats: dict[int, dict] = {}

    def fit_on(outer: int, fit_folds: Sequence[int]) -> dict[str, np.ndarray]:
        if outer not in stats:
            stats[outer] = {j: postprocess_stats(y[folds == j], inner[outer][folds == j])
                            for j in ids}
        return fit_postprocess(stats=combine_stats([stats[outer][j] for j in fit_folds]))

    penalty = MIN_GAIN * np.array([len(c) for c in candidates])

    def held_out_scores(fit_folds: list, k: int) -> np.ndarray:
        outer = ((set(ids) - set(fit_folds) - {k}) or {k}).pop()  # as in cv_blend
        params, rows = fit_on(outer, fit_folds), folds == k
        return np.array([score(y[rows], apply_postprocess(inner[outer][rows], params, c))[
            "score"] for c in candidates]) - penalty

    choices, curve = nested_choice(folds, held_out_scores, len(candidates))
    chains = {}
    for k, choice in zip(ids, choices):
        chain = inner[k].copy()  # what the steps after this one may see when choosing for k
        for j in ids:
            fit = [i for i in ids if i != j] if j == k else [i for i in ids if i not in (j, k)]
            chain[folds == j] = apply_postprocess(inner[k][folds == j], fit_on(k, fit or [j]),
                                                  candidates[choice])
        chains[k] = chain
    nested = np.empty(oof.shape, dtype=np.float32)
    for k in ids:
        nested[folds == k] = chains[k][folds == k]
    cv = score_folds(y, nested, folds, splitter)
    for parts, choice in zip(cv["folds"], choices):
        parts.update(steps="+".join(candidates[choice]) or "none",
                     selection=selection_rule(folds, len(candidates)))
    gain = cv["overall"]["score"] - baseline["overall"]["score"]
    chosen = candidates[int(np.argmax(curve))] if gain > 0 else ()
    test_pred = apply_postprocess(test, fit_postprocess(y, oof), chosen) if chosen else test
    curve = {"+".join(c) or "none": float(s) for c, s in zip(candidates, curve + penalty)}
    return PostResult(chosen, [candidates[c] for c in choices], curve, nested, test_pred, cv,
                      float(gain), chains)


def keep_best(y: np.ndarray, folds: np.ndarray, splitter: str, blended: BlendResult,
              post: PostResult, runs: Sequence[Run]) -> dict:
    """What to submit: the blend (after post-processing) unless a run alone beats it. Each fold
    picks, among the blend and every run, the candidate with the best mean score on the other
    folds, the blend's predictions there being `post.inner_oof[k]` (made without fold k's
    labels), so the reported CV is honest; the test predictions come from the candidate best
    on all folds. Returns {"kept", "oof", "test_pred", "cv", "fold_choices", "note",
    "selection"}."""
    blend_name = f"blend {blended.mode}" + (" + " + "+".join(post.steps) if post.steps else "")
    # the nested OOF rows whatever the test predictions got: fold k's steps (or none) were
    # chosen without fold k, while `post.steps` read every fold
    candidates = {blend_name: (post.oof, post.test_pred)}
    candidates.update({label: (run.oof, run.test_pred)
                       for label, run in zip(run_labels(runs), runs)})
    names, ids = list(candidates), [int(k) for k in np.unique(folds)]
    inner = post.inner_oof or dict.fromkeys(ids, post.oof)
    member = {int(k): np.array([score(y[folds == k], oof[folds == k])["score"]
                                for oof, _ in list(candidates.values())[1:]]) for k in ids}

    def held_out_scores(fit_folds: list, k: int) -> np.ndarray:
        outer = ((set(ids) - set(fit_folds) - {k}) or {k}).pop()  # as in cv_blend
        return np.r_[score(y[folds == k], inner[outer][folds == k])["score"], member[k]]

    choices, curve = nested_choice(folds, held_out_scores, len(names))
    oof = np.empty(y.shape, np.float32)
    for k, choice in zip(ids, choices):
        oof[folds == k] = candidates[names[choice]][0][folds == k]
    kept = names[int(np.argmax(curve))]
    best_run = max(names[1:], key=lambda n: curve[names.index(n)])
    gap = curve[0] - curve[names.index(best_run)]
    note = (f"kept {kept!r}: the blend scores {curve[0]:.4f} on held-out folds, its best member "
            f"{best_run!r} {curve[names.index(best_run)]:.4f} ({gap:+.4f})")
    if kept != blend_name:
        note += "; the blend does not beat its best member, so the member is submitted"
    return {"kept": kept, "oof": oof, "test_pred": candidates[kept][1],
            "cv": score_folds(y, oof, folds, splitter),
            "fold_choices": [names[c] for c in choices], "note": note,
            "selection": selection_rule(folds, len(names))}


# --- 07's steps -------------------------------------------------------------------------------

@dataclass
class BlendOutcome:
    """07 from its runs to what it submits: the nested blend, its post-processing, the nested
    choice between them and each run alone (`final`, as `keep_best` returns it) and every CV
    report on the way (`cvs`, in the order they were made)."""

    runs: list[Run]
    blended: BlendResult
    post: PostResult
    final: dict
    cvs: dict[str, dict]


def blend_runs(cfg, data: KitData, runs: Sequence[Run]) -> BlendOutcome:
    """07's chain on `runs`: the nested-CV blend that BLEND, SHRINK, GENE_GROUPS and
    GROUP_STRATEGY ask for, POSTPROCESS measured on it (nested), and the nested choice between
    the result and each run alone; `cvs` also holds every run alone, the plain mean and the
    fixed weights (three runs) to compare with."""
    oof, test = stack_predictions(runs)
    y, folds, splitter = data.y, runs[0].folds, runs[0].cv["splitter"]
    set_of_gene, sets, fold_sets = blend_sets(cfg.blend, data.genes, y, folds, cfg.gene_groups,
                                              cfg.group_strategy)
    blended = cv_blend(y, oof, test, folds, cfg.blend, set_of_gene, sets, cfg.shrink, splitter,
                       fold_sets)
    post = cv_postprocess(y, blended.oof, blended.test_pred, folds, cfg.postprocess, blended.cv,
                          splitter, blended.inner_oof)
    final = keep_best(y, folds, splitter, blended, post, runs)
    cvs = {**comparison_cvs(y, oof, folds, run_labels(runs), splitter),
           f"blend {cfg.blend} (nested)": blended.cv, "+ post-processing (nested)": post.cv,
           "submitted (nested choice)": final["cv"]}
    return BlendOutcome(list(runs), blended, post, final, cvs)


def describe_shrink(blended: BlendResult) -> str:
    """The shrinkage used for the test weights, per outer fold, and its held-out curve."""
    return (f"shrink {blended.shrink} (per outer fold: {blended.fold_shrinks}); held-out score "
            f"by shrink: {blended.shrink_curve}")


def describe_postprocess(post: PostResult) -> str:
    """Each candidate's held-out score, the choice per outer fold and what the test gets."""
    return (f"held-out score by candidate: {post.curve}; chosen per outer fold: "
            f"{post.fold_steps}\nnested gain {post.gain:+.5f} → applied to the test predictions: "
            f"{' + '.join(post.steps) or 'nothing'}")
