"""01_eda: per-gene distributions, slice structure along row order, image colour (RGB and HED
stains), a classifier that tells train patches from test patches, duplicate patches (found by
utils.duplicates, shown here), and the figures of all that.

Train rows are stored slice by slice and the test set is an unseen slice, so the row order
carries structure: `find_change_points` looks for the rows where expression and colour jump.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.cv import split_rows
from utils.files import write_csv, write_json
from utils.metric import top_genes
from utils.plots import figure
from utils.slices import find_change_points, row_signals

CHANNELS = ("R", "G", "B", "H", "E", "D")  # RGB, then haematoxylin, eosin, DAB optical density


# --- genes ------------------------------------------------------------------------------------

def gene_stats(y: np.ndarray, genes: list[str], near_zero: float = 0.01,
               n_top: int = 50) -> pd.DataFrame:
    """Per gene: mean, variance, CV, fraction of |y| < near_zero, skew, min, max, and whether
    it is among the n_top most expressed (heg50) / most variable (hvg50) genes the metric scores."""
    y = np.asarray(y, dtype=np.float64)
    mean, std = y.mean(0), y.std(0)
    centred = y - mean
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean != 0, std / np.abs(mean), np.nan)
        skew = np.where(std > 0, (centred**3).mean(0) / std**3, 0.0)
    top = top_genes(y, n_top)
    flags = {key: np.isin(np.arange(y.shape[1]), idx) for key, idx in top.items()}
    return pd.DataFrame({"gene": genes, "mean": mean, "var": std**2, "cv": cv,
                         "near_zero": (np.abs(y) < near_zero).mean(0), "skew": skew,
                         "min": y.min(0), "max": y.max(0), **flags})


def example_genes(stats: pd.DataFrame, n: int) -> np.ndarray:
    """Indices of n genes spread over the range of mean expression (lowest to highest)."""
    order = np.argsort(stats["mean"].to_numpy(), kind="stable")
    return order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]


def pair_correlations(corr: np.ndarray, max_pairs: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """Gene–gene r of distinct pairs (the upper triangle), a random sample if there are more."""
    rows, cols = np.triu_indices(len(corr), k=1)
    if len(rows) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(rows), max_pairs, replace=False)
        rows, cols = rows[pick], cols[pick]
    return corr[rows, cols]


# --- slice structure along row order ----------------------------------------------------------

def rolling_mean(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """Centred rolling mean over rows (shorter windows at the ends)."""
    return frame.rolling(window, center=True, min_periods=1).mean()


def row_structure(y: np.ndarray, image_features: pd.DataFrame | None, window: int,
                  ratio: float = 6.0, max_points: int = 10, n_folds: int = 4,
                  seed: int = 0) -> dict:
    """Signals along row order (rolling means), their change points, and the edges of the
    default CV folds (`CV="slices"`: the slices `utils.slices.find_slices` finds, as 05 uses
    them; blocks if it finds none): `change_points.json` of 01 plus the frame to plot."""
    colour = None if image_features is None else image_features[[f"mean_{c}" for c in CHANNELS[:5]]]
    signals = row_signals(y, colour, seed=seed)
    change_points = find_change_points(signals.to_numpy(), window, ratio, max_points)
    folds, splitter, note = split_rows("slices", y, n_folds, seed)
    edges = np.flatnonzero(np.diff(folds)) + 1
    return {"window": window, "change_points": change_points, "cv_splitter": splitter,
            "cv_fold_edges": edges.tolist(), "cv_note": note,
            "rolling": rolling_mean(signals, window)}


# --- images -----------------------------------------------------------------------------------

def to_channels(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) → float32 (..., 6): R, G, B in [0, 1], then H, E, D (rgb2hed)."""
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    return np.concatenate([rgb / np.float32(255), rgb2hed(rgb)], axis=-1).astype(np.float32)


def image_features(images: np.ndarray, stride: int = 4, chunk: int = 256) -> pd.DataFrame:
    """Per patch: mean and standard deviation of R, G, B, H, E, D over every stride-th pixel,
    and the fraction of near-white pixels (background, fat, lumen)."""
    parts = []
    for start in range(0, len(images), chunk):  # chunks bound the memory, not a per-image loop
        rgb = np.asarray(images[start:start + chunk, ::stride, ::stride])
        values = to_channels(rgb).reshape(len(rgb), -1, len(CHANNELS))
        white = (rgb.reshape(len(rgb), -1, 3).min(-1) > 220).mean(1)
        parts.append(np.column_stack([values.mean(1), values.std(1), white]))
    columns = [f"{s}_{c}" for s in ("mean", "std") for c in CHANNELS] + ["white"]
    return pd.DataFrame(np.vstack(parts), columns=columns)


def pixel_sample(images: np.ndarray, n_pixels: int = 200_000, stride: int = 4,
                 seed: int = 0) -> pd.DataFrame:
    """R, G, B, H, E, D values of random pixels from random patches (for histograms)."""
    rng = np.random.default_rng(seed)
    per_patch = max(1, n_pixels // min(len(images), 500))
    patches = np.sort(rng.choice(len(images), min(len(images), 500), replace=False))
    rgb = np.asarray(images[patches, ::stride, ::stride]).reshape(len(patches), -1, 3)
    cols = rng.integers(0, rgb.shape[1], (len(patches), per_patch))
    pixels = np.take_along_axis(rgb, cols[..., None], axis=1).reshape(-1, 3)
    return pd.DataFrame(to_channels(pixels), columns=list(CHANNELS))


def feature_auc(train: pd.DataFrame, test: pd.DataFrame) -> pd.Series:
    """Per feature, the AUC of telling test from train by that feature alone (0.5: no shift;
    above 0.5: higher in test)."""
    from scipy.stats import rankdata

    values = np.vstack([train.to_numpy(), test.to_numpy()])
    ranks = rankdata(values, axis=0)[len(train):]
    n1, n0 = len(test), len(train)
    return pd.Series((ranks.sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0), index=train.columns)


def shift_auc(train: pd.DataFrame, test: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated AUC of a logistic regression telling test patches from train patches by
    their image features: ~0.5 means no visible shift, near 1 a strong one (e.g. staining)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([train.to_numpy(), test.to_numpy()])
    is_test = np.r_[np.zeros(len(train)), np.ones(len(test))]
    n_folds = int(min(n_folds, len(train), len(test)))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, x, is_test, cv=cv, method="predict_proba")[:, 1]
    return {"auc": float(roc_auc_score(is_test, proba)), "n_folds": n_folds,
            "n_train": len(train), "n_test": len(test),
            "features": feature_auc(train, test).round(4).to_dict()}


# --- figures --------------------------------------------------------------------------------

def _no_minor_labels(ax) -> None:
    """Log axes: label the decades only (minor labels overlap on narrow ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


# --- 01: genes --------------------------------------------------------------------------------

def plot_gene_scales(stats: pd.DataFrame):
    """Distribution of per-gene means and variances on log scales."""
    fig, axes = figure(ncols=2)
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
    fig, axes = figure(3.2 * ncols, 2.4 * nrows, nrows, ncols, squeeze=False)
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
    fig, ax = figure(6, 4.5)
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
    fig, ax = figure(6, 3.5)
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
    fig, axes = figure(10, 1.3 * len(rolling.columns) + 0.6, nrows=len(rolling.columns),
                        sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], rolling.columns):
        ax.plot(rolling[column].to_numpy(), lw=1)
        ax.set_ylabel(column, rotation=0, ha="right", va="center", fontsize="small")
        for row in change_points:
            ax.axvline(row, color="C3", lw=1.2)
        for row in fold_edges or []:
            ax.axvline(row, color="k", ls=":", lw=1)
    axes[0, 0].set_title("rolling means along row order (red: change points, dotted: the "
                         "CV fold edges 05 uses by default)")
    axes[-1, 0].set_xlabel("train row")
    return fig


def plot_channels(train: pd.DataFrame, test: pd.DataFrame):
    """Pixel distributions of R, G, B and H, E, D (stain optical densities), train vs test."""
    fig, axes = figure(10, 5, nrows=2, ncols=3)
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
    fig, axes = figure(1.4 * n, 3.2, nrows=2, ncols=n, squeeze=False)
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
    fig, ax = figure(6, 0.25 * len(auc) + 1)
    ax.barh(auc.index, auc.to_numpy() - 0.5, left=0.5, color=np.where(auc > 0.5, "C1", "C0"))
    ax.axvline(0.5, color="k", lw=1)
    ax.set(xlim=(0, 1), xlabel="AUC of the feature alone (>0.5: higher in test)",
           title=f"train vs test: classifier AUC {shift['auc']:.3f} ({shift['n_folds']}-fold)")
    return fig


# --- 01's steps: compute, write into the run folder, return -----------------------------------

def save_gene_stats(run: Path, y: np.ndarray, genes: list[str],
                    near_zero: float = 0.01) -> pd.DataFrame:
    """`gene_stats` of the train targets, written as the run's gene_stats.csv."""
    stats = gene_stats(y, genes, near_zero)
    write_csv(run / "gene_stats.csv", stats)
    return stats


def describe_gene_stats(stats: pd.DataFrame) -> str:
    """One line: how many genes go negative and how many are ≈ 0 almost everywhere."""
    return (f"{len(stats)} genes: {(stats['min'] < 0).sum()} have negative values, "
            f"{(stats['near_zero'] > 0.9).sum()} are ≈ 0 in more than 90% of spots")


def summarize_gene_stats(stats: pd.DataFrame) -> pd.DataFrame:
    """The distribution of each per-gene statistic over the genes (count, mean, quartiles…)."""
    return stats.drop(columns=["gene", "heg50", "hvg50"]).describe().T.round(3)


def scored_genes(stats: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The `n` most expressed of the genes the metric scores in heg50 or hvg50."""
    return stats[stats["heg50"] | stats["hvg50"]].sort_values("mean", ascending=False).head(n)


def plot_top_clustermap(corr: np.ndarray, stats: pd.DataFrame, n: int):
    """`plot_clustermap` of the `n` most variable genes."""
    top = np.argsort(-stats["var"].to_numpy(), kind="stable")[:n]
    return plot_clustermap(corr[np.ix_(top, top)], stats["gene"].iloc[top].tolist())


def image_stats(images: dict[str, np.ndarray], stride: int = 4) -> dict[str, pd.DataFrame]:
    """`image_features` of every split's patches."""
    return {split: image_features(patches, stride) for split, patches in images.items()}


def save_row_structure(run: Path, cfg, y: np.ndarray, train_features: pd.DataFrame) -> dict:
    """`row_structure` with 01's settings, written (rolling signals aside) as
    change_points.json."""
    rows = row_structure(y, train_features, cfg.window_for(len(y)), cfg.change_ratio,
                         cfg.max_change_points, seed=cfg.seed)
    write_json(run / "change_points.json", {k: v for k, v in rows.items() if k != "rolling"})
    return rows


def describe_row_structure(rows: dict) -> str:
    """The window, the change points found and how 05's default CV splits the rows."""
    return (f"window {rows['window']} rows; change points at rows {rows['change_points']}\n"
            f"{rows['cv_note']}")


def save_image_stats(run: Path, features: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every split's colour statistics in one table, written as image_stats.csv."""
    table = pd.concat([f.assign(split=split) for split, f in features.items()])
    write_csv(run / "image_stats.csv", table)
    return table


def plot_pixel_channels(images: dict[str, np.ndarray], stride: int = 4, seed: int = 0):
    """`plot_channels` of pixels sampled from the train and the test patches."""
    return plot_channels(*(pixel_sample(images[s], stride=stride, seed=seed)
                           for s in ("train", "test")))


def save_shift(run: Path, features: dict[str, pd.DataFrame], seed: int = 0) -> dict:
    """`shift_auc` of train vs test colour statistics, written as shift.json."""
    shift = shift_auc(features["train"], features["test"], seed=seed)
    write_json(run / "shift.json", shift)
    return shift


# --- duplicate patches ------------------------------------------------------------------------

def plot_duplicate_pairs(train: np.ndarray, test: np.ndarray, pairs: pd.DataFrame, n: int = 6):
    """Up to n duplicate pairs (utils.duplicates: exact first, then the closest near ones), each
    a column: the train patch above its copy (train or test); a note when there are none."""
    shown = pairs.sort_values(["kind", "bits"], kind="stable").head(n)
    fig, axes = figure(1.6 * max(len(shown), 1) + 0.4, 3.6, nrows=2,
                       ncols=max(len(shown), 1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if shown.empty:
        axes[0, 0].text(0, 0.5, "no duplicate patches found", fontsize="large")
        return fig
    for col, pair in enumerate(shown.itertuples()):
        other = train if pair.where == "train–train" else test
        axes[0, col].imshow(train[pair.row_a])
        axes[0, col].set_title(f"{pair.kind}, {pair.bits} bits\n{pair.id_a}", fontsize="small")
        axes[1, col].imshow(other[pair.row_b])
        axes[1, col].set_title(pair.id_b, fontsize="small")
    return fig
