"""Figures of 01_eda and 02_gene_clustering; every helper returns its matplotlib figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.plots import figure as _figure

OTHER_COLOUR = "#d0d0d0"


def _no_minor_labels(ax) -> None:
    """Log axes: label the decades only (minor labels overlap on narrow ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


# --- 01: genes --------------------------------------------------------------------------------

def plot_gene_scales(stats: pd.DataFrame):
    """Distribution of per-gene means and variances on log scales."""
    fig, axes = _figure(ncols=2)
    for ax, column in zip(axes, ("mean", "var")):
        values = stats[column].to_numpy()
        positive = values[values > 0]
        ax.hist(positive, bins=np.geomspace(positive.min(), positive.max(), 50), color="C0")
        ax.set(xscale="log", xlabel=f"per-gene {column}", ylabel="genes",
               title=f"{column} ({(values <= 0).sum()} genes ≤ 0 not shown)")
        _no_minor_labels(ax)
    return fig


def plot_example_genes(y: np.ndarray, stats: pd.DataFrame, indices: np.ndarray):
    """Histograms of a few genes from the lowest to the highest mean expression."""
    ncols = min(3, len(indices))
    nrows = int(np.ceil(len(indices) / ncols))
    fig, axes = _figure(3.2 * ncols, 2.4 * nrows, nrows, ncols, squeeze=False)
    for ax, i in zip(axes.flat, indices):
        row = stats.iloc[i]
        ax.hist(y[:, i], bins=40, color="C0")
        ax.set(title=f"{row['gene']}: mean {row['mean']:.2g}, {row['near_zero']:.0%} ≈ 0",
               xlabel="expression", ylabel="spots")
    for ax in axes.flat[len(indices):]:
        ax.axis("off")
    return fig


def plot_mean_variance(stats: pd.DataFrame):
    """Mean against variance per gene, the genes the metric scores (heg50, hvg50) highlighted."""
    fig, ax = _figure(6, 4.5)
    keep = (stats["mean"] > 0) & (stats["var"] > 0)
    ax.scatter(stats["mean"][keep], stats["var"][keep], s=4, c="lightgray", label="all genes")
    for column, colour, label in (("heg50", "C1", "50 most expressed"),
                                  ("hvg50", "C0", "50 most variable")):
        top = stats[keep & stats[column]]
        ax.scatter(top["mean"], top["var"], s=14, c=colour, label=label, alpha=0.8)
    ax.set(xscale="log", yscale="log", xlabel="mean", ylabel="variance",
           title="mean–variance (genes with mean and variance > 0)")
    _no_minor_labels(ax)
    ax.legend(fontsize="small")
    return fig


def plot_pair_correlations(values: np.ndarray):
    """Histogram of gene–gene correlations, with their mean and 1st/99th percentiles."""
    fig, ax = _figure(6, 3.5)
    ax.hist(values, bins=100, color="C0")
    for q, style in ((1, ":"), (99, ":")):
        ax.axvline(np.percentile(values, q), color="k", ls=style)
    ax.axvline(values.mean(), color="k", label=f"mean {values.mean():.3f}")
    ax.set(xlabel="Pearson r between two genes", ylabel="gene pairs", yscale="log",
           title=f"{len(values):,} gene pairs (dotted: 1st and 99th percentile)")
    ax.legend()
    return fig


def plot_clustermap(corr: np.ndarray, names: list[str]):
    """Clustered heatmap of a gene–gene correlation matrix (seaborn clustermap)."""
    import seaborn as sns

    frame = pd.DataFrame(corr, index=names, columns=names)
    size = min(14, 4 + 0.12 * len(names))
    grid = sns.clustermap(frame, cmap="RdBu_r", vmin=-1, vmax=1, figsize=(size, size),
                          xticklabels=len(names) <= 80, yticklabels=len(names) <= 80,
                          cbar_kws={"label": "r"})
    return grid.figure


# --- 01: slice structure and images -----------------------------------------------------------

def plot_row_structure(rolling: pd.DataFrame, change_points: list[int],
                       fold_edges: list[int] | None = None):
    """Rolling signals against train row, detected change points (red) and CV fold edges."""
    fig, axes = _figure(10, 1.3 * len(rolling.columns) + 0.6, nrows=len(rolling.columns),
                        sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], rolling.columns):
        ax.plot(rolling[column].to_numpy(), lw=1)
        ax.set_ylabel(column, rotation=0, ha="right", va="center", fontsize="small")
        for row in change_points:
            ax.axvline(row, color="C3", lw=1.2)
        for row in fold_edges or []:
            ax.axvline(row, color="k", ls=":", lw=1)
    axes[0, 0].set_title("rolling means along row order (red: detected change points, "
                         "dotted: block-CV fold edges)")
    axes[-1, 0].set_xlabel("train row")
    return fig


def plot_channels(train: pd.DataFrame, test: pd.DataFrame):
    """Pixel distributions of R, G, B and H, E, D (stain optical densities), train vs test."""
    fig, axes = _figure(10, 5, nrows=2, ncols=3)
    for ax, channel in zip(axes.flat, train.columns):
        both = np.r_[train[channel], test[channel]]
        bins = np.linspace(*np.percentile(both, [0.5, 99.5]), 60)
        ax.hist(train[channel], bins=bins, density=True, alpha=0.6, label="train")
        ax.hist(test[channel], bins=bins, density=True, alpha=0.6, label="test")
        ax.set(title=channel, yticks=[])
    axes.flat[0].legend()
    return fig


def plot_patches(train: np.ndarray, test: np.ndarray, n: int = 8, seed: int = 0):
    """A row of random train patches above a row of random test patches."""
    rng = np.random.default_rng(seed)
    fig, axes = _figure(1.4 * n, 3.2, nrows=2, ncols=n, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (name, images) in enumerate((("train", train), ("test", test))):
        picks = np.sort(rng.choice(len(images), min(n, len(images)), replace=False))
        for ax, i in zip(axes[row], picks):
            ax.imshow(images[i])
            ax.set_title(f"{name} {i}", fontsize="small")
    return fig


def plot_shift(shift: dict):
    """Per-feature AUC of telling test from train (0.5: no shift), with the classifier's AUC."""
    auc = pd.Series(shift["features"]).sort_values()
    fig, ax = _figure(6, 0.25 * len(auc) + 1)
    ax.barh(auc.index, auc.to_numpy() - 0.5, left=0.5, color=np.where(auc > 0.5, "C1", "C0"))
    ax.axvline(0.5, color="k", lw=1)
    ax.set(xlim=(0, 1), xlabel="AUC of the feature alone (>0.5: higher in test)",
           title=f"train vs test: classifier AUC {shift['auc']:.3f} ({shift['n_folds']}-fold)")
    return fig


# --- 02: gene groups --------------------------------------------------------------------------

def plot_silhouette(scores: dict[int, float], k: int):
    """Silhouette of KMeans on the gene embedding against K, the chosen K marked."""
    fig, ax = _figure(5, 3)
    ax.plot(list(scores), list(scores.values()), "o-")
    ax.axvline(k, color="k", ls=":", label=f"K = {k}")
    ax.set(xlabel="K (clusters)", ylabel="mean silhouette", title="choosing K")
    ax.legend()
    return fig


def plot_gene_umap(embedding: np.ndarray, groupings: dict, max_legend: int = 14):
    """The genes' UMAP embedding, one panel per strategy, coloured by group (`other` grey)."""
    fig, axes = _figure(4.6 * len(groupings), 4.6, ncols=len(groupings), squeeze=False)
    for ax, (name, grouping) in zip(axes[0], groupings.items()):
        labels = np.asarray(grouping.labels)
        sizes = pd.Series(labels).value_counts()
        other = labels == "other"
        if other.any():
            ax.scatter(*embedding[other].T, s=3, c=OTHER_COLOUR, label="other")
        for j, group in enumerate(g for g in sizes.index if g != "other"):
            ax.scatter(*embedding[labels == group].T, s=3, color=f"C{j % 10}",
                       marker="os^D"[j // 10 % 4], label=group if j < max_legend else None)
        ax.set(title=f"{name}: {len(sizes)} groups", xticks=[], yticks=[])
        ax.legend(fontsize="x-small", markerscale=3, loc="best", ncols=2)
    return fig


def plot_group_coherence(tables: dict[str, pd.DataFrame]):
    """Within-group mean r against group size, per strategy (coherent groups sit high)."""
    fig, ax = _figure(6, 4)
    for j, (name, table) in enumerate(tables.items()):
        ax.scatter(table["size"], table["within_r"], s=20, color=f"C{j}", label=name, alpha=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="genes in the group", ylabel="mean r within the group",
           title="group coherence")
    ax.legend()
    return fig
