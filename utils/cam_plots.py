"""Figures of 05_gradcam; every helper returns its matplotlib figure (imported on use)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from utils.genes import OTHER

CMAP = "jet"  # pytorch-grad-cam's overlay colours: red = where the target's gradient points


def _subplots(nrows: int, ncols: int, cell: float = 1.6, **kwargs):
    """A grid of square cells without ticks."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.4),
                             squeeze=False, layout="constrained", **kwargs)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def overlay(ax, patch: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> None:
    """A patch with its CAM (any resolution, stretched over the patch) on top."""
    height, width = patch.shape[:2]
    ax.imshow(patch)
    ax.imshow(cam, cmap=CMAP, alpha=alpha, vmin=0, vmax=1, interpolation="bilinear",
              extent=(0, width, height, 0))


def plot_cam_grid(patches: np.ndarray, maps: np.ndarray, names: Sequence[str],
                  scores: np.ndarray, patch_ids: Sequence[str]):
    """Patches (rows) × targets (columns): each CAM over its patch, the predicted target value
    (standardised unless SCALE='original') in the corner."""
    n_targets, n_patches = maps.shape[:2]
    fig, axes = _subplots(n_patches, n_targets + 1)
    for i in range(n_patches):
        axes[i, 0].imshow(patches[i])
        axes[i, 0].set_ylabel(str(patch_ids[i]), fontsize=7)
        for t in range(n_targets):
            ax = axes[i, t + 1]
            overlay(ax, patches[i], maps[t, i])
            ax.text(0.03, 0.04, f"{scores[t, i]:+.2f}", transform=ax.transAxes, fontsize=7,
                    color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
    axes[0, 0].set_title("patch", fontsize=8)
    for t, name in enumerate(names):
        axes[0, t + 1].set_title(str(name), fontsize=8)
    return fig


def plot_group_average(maps: np.ndarray, names: Sequence[str], sizes: Sequence[int],
                       ncols: int = 8):
    """Per gene group, its CAM averaged over the patches (where in a patch the group looks)."""
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = _subplots(nrows, ncols)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    mean = maps.mean(axis=1)
    for ax, name, size, image in zip(axes.flat, names, sizes, mean):
        ax.imshow(image, cmap=CMAP, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(f"{name} ({size})", fontsize=8)
    fig.suptitle("mean CAM over patches per gene group (genes)", fontsize=9)
    return fig


def plot_similarity(sim: np.ndarray, labels: np.ndarray, table: pd.DataFrame, strategy: str):
    """Left: gene × gene CAM similarity, genes sorted by `strategy`'s groups (`other` left out);
    right: mean similarity within vs between groups per strategy, with permutation p-values."""
    import matplotlib.pyplot as plt

    keep = np.flatnonzero(labels != OTHER)
    order = keep[np.argsort(labels[keep], kind="stable")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    image = left.imshow(sim[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1,
                        interpolation="nearest")
    names, starts = np.unique(labels[order], return_index=True)
    for start in starts[1:]:
        left.axhline(start - 0.5, color="black", lw=0.6)
        left.axvline(start - 0.5, color="black", lw=0.6)
    ends = np.append(starts[1:], len(order))
    left.set_yticks((starts + ends - 1) / 2, names, fontsize=7)
    left.set_xticks([])
    left.set_title(f"CAM similarity of genes, by {strategy} group", fontsize=9)
    fig.colorbar(image, ax=left, shrink=0.8, label="mean Pearson r over patches")
    x = np.arange(len(table))
    right.bar(x - 0.2, table["within"], 0.4, label="within groups")
    right.bar(x + 0.2, table["between"], 0.4, label="between groups")
    right.set_xticks(x, [f"{s}\np={p:.3g}" for s, p in zip(table.index, table["p_value"])],
                     fontsize=8)
    right.axhline(0, color="grey", lw=0.6)
    right.set_ylabel("mean CAM similarity (r)")
    right.legend(fontsize=8)
    return fig
