"""07_ensemble_submit: blend runs with weights fitted on their out-of-fold predictions, score the
blend honestly, post-process, audit, and write a validated submission.

Weights are non-negative and sum to one: one set for all genes (`global`), one per gene group
(`group`) or one per gene (`gene`); `mean` is the plain average. Candidates come from a regular
simplex grid and every candidate is scored in closed form from per-fold covariances, so fitting
needs no optimiser and no loop over genes. Global weights maximise the official score itself;
group and gene weights maximise the mean per-gene Pearson r of their genes (what the metric's
gene parts average; the cells part couples all genes, so it is judged on held-out folds). The
fitted weights are shrunk towards equal weights by an amount chosen by CV.

Nested CV keeps the printed score honest: the weights that predict fold k are fitted on the other
folds only, with the shrinkage chosen by an inner CV among those folds; each fold is then scored
as a whole test set, exactly as `utils.metric.score_folds` reports single runs.

Post-processing steps (each fitted on train rows only):
- `shrink_to_mean`: per gene, pull predictions towards the train mean by the least-squares
  slope of truth on prediction (in (0, 1]). Per-gene r is unchanged; the per-spot profile
  across genes (the metric's `cells` part) is what moves.
- `clip`: per gene, clip predictions to the train range (a column it would flatten is left as is).
Which steps to use is chosen by nested CV on the blended OOF predictions, and they are applied to
the test predictions only if the nested score beats the blend without them.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import BLENDS, POSTPROCESS_STEPS
from utils.genes import LABEL_FREE, groups_on_rows, load_gene_groups, read_grouping_config
from utils.metric import (
    KEYS,
    PARTS,
    nested_choice,
    pearson_from_moments,
    score,
    score_folds,
    top_genes,
)
from utils.paths import resolve, write_json, write_with
from utils.runs import Run

SEED_WEIGHTS = (0.6, 0.2, 0.2)  # the seed team's fixed blend of their three models
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
    the groups are also recomputed without each fold's rows (02's settings), so that no fold's
    blend score rests on groups made from its own targets; the sets of all rows serve the test
    predictions.
    """
    if mode != "group":
        return (*weight_sets(mode, genes), None)
    groups = load_gene_groups(gene_groups, list(genes), strategy) if gene_groups else None
    set_of_gene, names = weight_sets(mode, genes, groups)
    if strategy in LABEL_FREE:
        return set_of_gene, names, None
    settings = read_grouping_config(gene_groups)
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
    nested, fitted_on = np.empty(y.shape, dtype=np.float32), []
    for k, choice in zip(ids, choices):
        others = [j for j in ids if j != k]
        tables, assign = tables_for(k)
        weights = shrink_weights(fit_weights(tables, others, grid), shrinks[choice])
        nested[folds == k] = blend(oof[:, folds == k], weights, assign)
        fitted_on.append(others)
    tables, _ = tables_for(None)
    shrink = shrinks[int(np.argmax(curve))]
    weights = shrink_weights(fit_weights(tables, ids, grid), shrink)
    return BlendResult(mode, sets, set_of_gene, weights, shrink,
                       [shrinks[c] for c in choices], fitted_on,
                       {"shrink": list(shrinks), "score": curve.tolist()}, nested,
                       blend(test, weights, set_of_gene), score_folds(y, nested, folds, splitter))


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
NEAR_CONSTANT = 1e-3  # a predicted column with sd below this fraction of the train sd


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
    fold_steps: list[tuple[str, ...]]  # per outer fold, chosen by inner CV on the other folds
    curve: dict[str, float]  # each candidate fitted without fold k, scored on k, mean over k
    oof: np.ndarray  # nested: the post-processing of fold k fitted without fold k
    test_pred: np.ndarray
    cv: dict
    gain: float  # nested score minus the score without post-processing


def cv_postprocess(y: np.ndarray, oof: np.ndarray, test: np.ndarray, folds: np.ndarray,
                   steps: Sequence[str], baseline: dict, splitter: str = "blocks") -> PostResult:
    """Choose post-processing steps by nested CV (each step must add MIN_GAIN on held-out
    folds); apply them to the test predictions only if the nested score beats `baseline`."""
    candidates = step_candidates(steps)
    ids = [int(k) for k in np.unique(folds)]
    stats = {k: postprocess_stats(y[folds == k], oof[folds == k]) for k in ids}

    def fit_on(fit_folds: Sequence[int]) -> dict[str, np.ndarray]:
        return fit_postprocess(stats=combine_stats([stats[j] for j in fit_folds]))

    penalty = MIN_GAIN * np.array([len(c) for c in candidates])

    def held_out_scores(fit_folds: list, k: int) -> np.ndarray:
        params, rows = fit_on(fit_folds), folds == k
        return np.array([score(y[rows], apply_postprocess(oof[rows], params, c))["score"]
                         for c in candidates]) - penalty

    choices, curve = nested_choice(folds, held_out_scores, len(candidates))
    nested = np.empty(oof.shape, dtype=np.float32)
    for k, choice in zip(ids, choices):
        params = fit_on([j for j in ids if j != k])
        nested[folds == k] = apply_postprocess(oof[folds == k], params, candidates[choice])
    cv = score_folds(y, nested, folds, splitter)
    gain = cv["overall"]["score"] - baseline["overall"]["score"]
    chosen = candidates[int(np.argmax(curve))] if gain > 0 else ()
    curve = curve + penalty
    test_pred = apply_postprocess(test, fit_on(ids), chosen) if chosen else test
    return PostResult(chosen, [candidates[c] for c in choices],
                      {"+".join(c) or "none": float(s) for c, s in zip(candidates, curve)},
                      nested, test_pred, cv, float(gain))


def audit_predictions(y: np.ndarray, oof: np.ndarray, test_pred: np.ndarray,
                      genes: Sequence[str]) -> pd.DataFrame:
    """Per gene: the train distribution next to the OOF and test predictions', with flags."""
    y = np.asarray(y, dtype=np.float64)
    oof, test_pred = np.asarray(oof, np.float64), np.asarray(test_pred, np.float64)
    train_sd, oof_sd, test_sd = y.std(axis=0), oof.std(axis=0), test_pred.std(axis=0)
    low, high = y.min(axis=0), y.max(axis=0)
    flat = (np.ptp(test_pred, axis=0) == 0) | (test_sd < NEAR_CONSTANT * train_sd)
    top = top_genes(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pd.DataFrame({
            "train_mean": y.mean(axis=0), "train_sd": train_sd, "oof_mean": oof.mean(axis=0),
            "oof_sd": oof_sd, "test_mean": test_pred.mean(axis=0), "test_sd": test_sd,
            "test_sd_ratio": test_sd / train_sd, "test_vs_oof_sd": test_sd / oof_sd,
            "test_shift": (test_pred.mean(axis=0) - oof.mean(axis=0)) / train_sd,
            "outside_train_range": ((test_pred < low) | (test_pred > high)).mean(axis=0),
            "near_constant": flat,
            "train_constant": np.ptp(y, axis=0) == 0,
            "scored": np.isin(np.arange(y.shape[1]), np.union1d(top["heg50"], top["hvg50"])),
        }, index=pd.Index(list(genes), name="gene"))
    return table


def summarize_audit(table: pd.DataFrame) -> pd.DataFrame:
    """Quantiles (over genes) of each numeric audit column, all genes and the scored ones."""
    numeric = table.select_dtypes("number").replace([np.inf, -np.inf], np.nan)
    quantiles = [0.05, 0.5, 0.95]
    summary = numeric.quantile(quantiles).T.add_prefix("all q")
    scored = numeric[table["scored"]].quantile(quantiles).T.add_prefix("scored q")
    return pd.concat([summary, scored], axis=1)


def audit_flags(table: pd.DataFrame) -> dict[str, list[str]]:
    """Genes worth a look before writing: constant predictions (scored r = 0), flat ones, flat
    train targets, big shifts."""
    constant = table["test_sd"] == 0
    return {"constant_predictions": table.index[constant].tolist(),
            "near_constant_predictions": table.index[table["near_constant"]].tolist(),
            "constant_in_train": table.index[table["train_constant"]].tolist(),
            "test_shift_over_1_sd": table.index[table["test_shift"].abs() > 1].tolist()}


def plot_audit(table: pd.DataFrame):
    """Predicted vs train spread and mean per gene (OOF and test), and the train→test shift."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, what in zip(axes[:2], ("sd", "mean")):
        for split, colour in (("oof", "tab:blue"), ("test", "tab:orange")):
            ax.scatter(table[f"train_{what}"], table[f"{split}_{what}"], s=4, alpha=0.4,
                       c=colour, label=f"{split} predictions")
        lim = [0 if what == "sd" else table[f"train_{what}"].min(), table[f"train_{what}"].max()]
        ax.plot(lim, lim, "k--", lw=1, label="= train")
        ax.set(xlabel=f"train {what} per gene", ylabel=f"predicted {what}",
               title=f"per-gene {what}: predicted vs train")
        ax.legend(fontsize="small")
    axes[0].set(xlim=(0, None), ylim=(0, None))
    shift = table["test_shift"].replace([np.inf, -np.inf], np.nan).dropna()
    axes[2].hist(shift, bins=50, color="gray")
    axes[2].set(xlabel="(test mean − OOF mean) / train sd", ylabel="genes",
                title="train → test shift in prediction space")
    return fig


def plot_prediction_pca(oof: np.ndarray, test_pred: np.ndarray, n_fit: int = 1000):
    """OOF and test predictions on the first two principal components of the OOF predictions
    (standardised per gene; the components are fitted on at most n_fit evenly spaced rows)."""
    import matplotlib.pyplot as plt

    oof, test_pred = np.asarray(oof, np.float64), np.asarray(test_pred, np.float64)
    mean, sd = oof.mean(axis=0), oof.std(axis=0)
    sd[sd == 0] = 1.0
    sample = oof[np.linspace(0, len(oof) - 1, min(n_fit, len(oof))).astype(int)]
    _, s, vt = np.linalg.svd((sample - mean) / sd, full_matrices=False)
    explained = s[:2] ** 2 / (s ** 2).sum()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for split, pred, colour in (("OOF", oof, "tab:blue"), ("test", test_pred, "tab:orange")):
        z = ((pred - mean) / sd) @ vt[:2].T
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.4, c=colour, label=f"{split} ({len(pred)})")
    ax.set(xlabel=f"PC1 ({explained[0]:.0%})", ylabel=f"PC2 ({explained[1]:.0%})",
           title="predictions: train (OOF) vs test")
    ax.legend()
    return fig


def report_path(submission: str | os.PathLike) -> Path:
    """Where the blend report goes: beside the submission, `<name>.blend.json`."""
    return resolve(submission).with_suffix(".blend.json")


def keep_best(y: np.ndarray, folds: np.ndarray, splitter: str, blended: BlendResult,
              post: PostResult, runs: Sequence[Run]) -> dict:
    """What to submit: the blend (after post-processing) unless a run alone beats it. Each fold
    picks, among the blend and every run, the candidate with the best mean score on the other
    folds (nested, so the reported CV is honest); the test predictions come from the candidate
    best on all folds. Returns {"kept", "oof", "test_pred", "cv", "fold_choices", "note"}."""
    blend_name = f"blend {blended.mode}" + (" + " + "+".join(post.steps) if post.steps else "")
    candidates = {blend_name: (post.oof if post.steps else blended.oof, post.test_pred)}
    candidates.update({label: (run.oof, run.test_pred)
                       for label, run in zip(run_labels(runs), runs)})
    names = list(candidates)
    scores = {int(k): np.array([score(y[folds == k], oof[folds == k])["score"]
                                for oof, _ in candidates.values()]) for k in np.unique(folds)}
    choices, curve = nested_choice(folds, lambda fit_folds, k: scores[int(k)], len(names))
    oof = np.empty(y.shape, np.float32)
    for k, choice in zip(np.unique(folds), choices):
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
            "fold_choices": [names[c] for c in choices], "note": note}


def write_blend_report(submission: str | os.PathLike, config: dict, runs: Sequence[Run],
                       blended: BlendResult, post: PostResult, cvs: dict[str, dict],
                       flags: dict[str, list[str]], kept: dict | None = None) -> Path:
    """Write what the submission is made of and how it scored (every CV report) as JSON."""
    labels = run_labels(runs)
    report = {
        "config": config, "submission": str(resolve(submission)),
        "data_fingerprint": runs[0].config.get("data_fingerprint") if runs else None,
        "runs": [{"label": label, "path": str(run.path), "recipe": run.config.get("recipe"),
                  "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"]}
                 for label, run in zip(labels, runs)],
        "blend": {"mode": blended.mode, "shrink": blended.shrink,
                  "fold_shrinks": blended.fold_shrinks, "fitted_on": blended.fitted_on,
                  "shrink_curve": blended.shrink_curve, "weight_sets": blended.sets,
                  "weights": dict(zip(labels, blended.weights.tolist()))},
        "postprocess": {"applied": list(post.steps), "gain": post.gain, "curve": post.curve,
                        "fold_steps": [list(s) for s in post.fold_steps]},
        "scores": cvs,
        "audit": {name: {"count": len(genes), "genes": genes[:50]}
                  for name, genes in flags.items()},
    }
    if kept is not None:
        report["submitted"] = {k: kept[k] for k in ("kept", "fold_choices", "note")}
    return write_json(report_path(submission), report)


# --- the submission file --------------------------------------------------------------------

class SubmissionError(ValueError):
    """The submission would be rejected or scored as garbage; the message says what and where."""


def make_submission(test_pred: np.ndarray, test_ids: list[str],
                    sample: pd.DataFrame) -> pd.DataFrame:
    """Predictions (rows in test.csv order) as a frame in sample_submission's ID order/columns."""
    genes = list(sample.columns[1:])
    test_pred = np.asarray(test_pred)
    if test_pred.shape != (len(test_ids), len(genes)):
        raise SubmissionError(f"predictions have shape {test_pred.shape}; expected "
                              f"({len(test_ids)} test rows, {len(genes)} genes)")
    frame = pd.DataFrame(test_pred, columns=genes)
    frame.insert(0, "ID", list(test_ids))
    unknown = sorted(set(sample["ID"]) - set(test_ids))
    if unknown:
        raise SubmissionError(f"{len(unknown)} sample_submission IDs have no prediction, e.g. "
                              f"{unknown[:5]}")
    return frame.set_index("ID").loc[sample["ID"]].reset_index()


class ConstantColumnsWarning(UserWarning):
    """The submission has constant gene columns: valid for DACON, but each is scored r = 0."""


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame,
                        strict: bool = False) -> list[str]:
    """Refuse wrong columns, row count or ID order and NaN/inf; constant gene columns (scored
    r = 0) give a ConstantColumnsWarning, or a SubmissionError if `strict`. The constant genes."""
    constant = _check_submission(frame, sample)
    _refuse_or_warn(constant, len(sample.columns) - 1, strict)
    return constant


def _check_submission(frame: pd.DataFrame, sample: pd.DataFrame) -> list[str]:
    """Every hard check of validate_submission; the names of the constant gene columns."""
    columns, expected = list(frame.columns), list(sample.columns)
    if columns != expected:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        raise SubmissionError(f"columns differ from sample_submission.csv: {len(missing)} missing "
                              f"{missing[:10]}, {len(extra)} extra {extra[:10]}"
                              + ("" if missing or extra else " (same names, different order)"))
    if len(frame) != len(sample):
        raise SubmissionError(f"{len(frame)} rows; sample_submission.csv has {len(sample)}")
    if frame["ID"].astype(str).tolist() != sample["ID"].astype(str).tolist():
        raise SubmissionError("IDs are not those of sample_submission.csv in the same order")
    values = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
    _check_finite(values, expected[1:], frame["ID"])
    return [expected[1 + c] for c in np.flatnonzero(np.ptp(values, axis=0) == 0)]


def _refuse_or_warn(constant: list[str], n_genes: int, strict: bool) -> None:
    """Say what constant columns cost; refuse them if `strict`."""
    if not constant:
        return
    what = (f"{len(constant)} of {n_genes} gene columns are constant, e.g. {constant[:10]}; "
            f"DACON scores each of them r = 0 (no loss in cells or max_gene; -1/50 of heg50 or "
            f"hvg50 for each that is among the test slice's 50 top genes)")
    if strict:
        raise SubmissionError(f"{what}. STRICT=True refuses such a file; set STRICT=False to "
                              f"write it anyway")
    warnings.warn(f"{what}. Written anyway (STRICT=False); the audit lists them as "
                  f"constant_predictions", ConstantColumnsWarning, stacklevel=3)


def _check_finite(values: np.ndarray, genes: list[str], ids: pd.Series) -> None:
    """NaN/inf cells → SubmissionError naming rows and columns."""
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise SubmissionError(f"NaN or inf in {len(rows)} rows (IDs {ids.iloc[rows[:5]].tolist()})"
                              f" and {len(cols)} columns ({[genes[c] for c in cols[:5]]})")


def write_submission(frame: pd.DataFrame, sample: pd.DataFrame,
                     path: str | os.PathLike, strict: bool = False) -> Path:
    """Validate, write to a temporary file, validate what was written, then rename into place.

    Reading the file back catches columns that only become constant once rounded to text; the
    warning (or, with `strict`, the refusal) about constant columns is about the file on disk.
    A crash at any point leaves the previous file (or none), never a half-written one.
    """
    n_genes = len(sample.columns) - 1
    if strict:
        _refuse_or_warn(_check_submission(frame, sample), n_genes, strict)
    else:
        _check_submission(frame, sample)

    def write_and_check(tmp: Path) -> None:
        frame.to_csv(tmp, index=False, float_format="%.7g")
        written = _check_submission(pd.read_csv(tmp, dtype={"ID": str}), sample)
        _refuse_or_warn(written, n_genes, strict)

    return write_with(path, write_and_check)
