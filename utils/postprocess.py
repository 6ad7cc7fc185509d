"""After blending, before writing: post-processing measured on OOF, and an audit of predictions.

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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cv import score_folds
from utils.ensemble import BlendResult, nested_choice, run_labels
from utils.io import write_json
from utils.metric import score, top_genes
from utils.paths import resolve
from utils.runs import Run

STEPS = ("shrink_to_mean", "clip")
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
    """Genes worth a look before writing: flat predictions, flat train targets, big shifts."""
    return {"near_constant_predictions": table.index[table["near_constant"]].tolist(),
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


def write_blend_report(submission: str | os.PathLike, config: dict, runs: Sequence[Run],
                       blended: BlendResult, post: PostResult, cvs: dict[str, dict],
                       flags: dict[str, list[str]]) -> Path:
    """Write what the submission is made of and how it scored (every CV report) as JSON."""
    labels = run_labels(runs)
    report = {
        "config": config, "submission": str(resolve(submission)),
        "runs": [{"label": label, "path": str(run.path), "recipe": run.config.get("recipe"),
                  "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"]}
                 for label, run in zip(labels, runs)],
        "blend": {"mode": blended.mode, "shrink": blended.shrink,
                  "fold_shrinks": blended.fold_shrinks, "fitted_on": blended.fitted_on,
                  "shrink_curve": blended.shrink_curve, "units": blended.units,
                  "weights": dict(zip(labels, blended.weights.tolist()))},
        "postprocess": {"applied": list(post.steps), "gain": post.gain, "curve": post.curve,
                        "fold_steps": [list(s) for s in post.fold_steps]},
        "scores": cvs,
        "audit": {name: {"count": len(genes), "genes": genes[:50]}
                  for name, genes in flags.items()},
    }
    return write_json(report_path(submission), report)
