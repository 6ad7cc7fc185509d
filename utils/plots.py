"""Figures the notebooks show; every helper returns its matplotlib figure."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from utils.io import write_with
from utils.metric import KEYS, max_gene_floor, pearson_genes, top_genes
from utils.paths import resolve


def figure(width: float = 8, height: float = 3.5, nrows: int = 1, ncols: int = 1, **kwargs):
    """A new figure and its axes (matplotlib imported only when plotting)."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)


def save_figure(fig, folder: str | os.PathLike, name: str) -> Path:
    """Save a figure as `<folder>/<name>.png` atomically (relative folders from the kit root)."""
    return write_with(resolve(folder) / f"{name}.png",
                      lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def plot_folds(folds: np.ndarray, splitter: str):
    """Fold of each train row along row order: blocks show as bands, random as noise."""
    fig, ax = figure(height=1.6)
    ax.imshow(folds[None, :], aspect="auto", cmap="tab10", interpolation="nearest")
    ax.set(yticks=[], xlabel="train row", title=f"CV folds along row order ({splitter})")
    return fig


def plot_cv(cv: dict):
    """Each metric part per fold, with the mean over folds and the pooled-OOF value."""
    fig, ax = figure()
    n, width = len(cv["folds"]), 0.8 / (len(cv["folds"]) + 2)
    rows = [*(f"fold {i}" for i in range(n)), "mean", "OOF"]
    values = [*cv["folds"], cv["overall"], cv["oof"]]
    for i, (label, parts) in enumerate(zip(rows, values)):
        ax.bar(np.arange(len(KEYS)) + i * width, [parts[k] for k in KEYS], width, label=label)
    ax.set_xticks(np.arange(len(KEYS)) + width * (len(rows) - 1) / 2, KEYS)
    ax.set(ylabel="Pearson r", title=f"CV by fold ({cv['splitter']}, {n} folds)")
    ax.legend(ncols=len(rows), fontsize="small")
    return fig


def plot_gene_r(y: np.ndarray, oof: np.ndarray, folds: np.ndarray):
    """Per-gene r of out-of-fold predictions (fold-wise mean), scored genes marked."""
    ids = np.unique(folds)
    r = np.mean([pearson_genes(y[folds == k], oof[folds == k]) for k in ids], axis=0)
    floor = np.mean([max_gene_floor(y[folds == k], oof[folds == k]) for k in ids])
    top = top_genes(y)
    fig, ax = figure()
    bins = np.linspace(min(r.min(), 0), max(r.max(), 0.1), 40)
    ax.hist(r, bins=bins, color="lightgray", label=f"all {len(r)} genes")
    ax.hist(r[top["heg50"]], bins=bins, alpha=0.7, label="50 most expressed")
    ax.hist(r[top["hvg50"]], bins=bins, alpha=0.7, label="50 most variable")
    ax.axvline(floor, color="k", ls="--", label=f"max-gene noise floor {floor:.2f}")
    ax.set(xlabel="per-gene Pearson r (mean over folds)", ylabel="genes", yscale="log")
    ax.legend(fontsize="small")
    return fig


def plot_alpha_curve(curve: dict):
    """Mean per-fold score against the ridge strength alpha."""
    fig, ax = figure(width=5)
    ax.semilogx(curve["alpha"], curve["score"], "o-")
    best = int(np.argmax(curve["score"]))
    ax.axvline(curve["alpha"][best], color="k", ls=":", label=f"best {curve['alpha'][best]:g}")
    ax.set(xlabel="alpha", ylabel="score (mean over folds)", title="ridge strength")
    ax.legend()
    return fig
