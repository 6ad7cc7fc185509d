"""Exploratory statistics for 01_eda: per-gene distributions, slice structure along row order,
image colour (RGB and HED stains) and a classifier that tells train patches from test patches.

Train rows are stored slice by slice and the test set is an unseen slice, so the row order
carries structure: `find_change_points` looks for the rows where expression and colour jump.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.metric import top_genes

CHANNELS = ("R", "G", "B", "H", "E", "D")  # RGB, then haematoxylin, eosin, DAB optical density


@dataclass(frozen=True)
class EdaConfig:
    """Parameters of notebooks/01_eda.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/eda"
    near_zero: float = 0.01
    n_example_genes: int = 6
    n_heatmap_genes: int = 60
    window: int | None = None
    change_ratio: float = 6.0
    max_change_points: int = 10
    image_stride: int = 4
    n_patches: int = 8
    seed: int = 0
    smoke: bool = False

    def __post_init__(self):
        if self.smoke:  # the quickest settings: a small heatmap, coarse colour statistics
            object.__setattr__(self, "n_heatmap_genes", min(self.n_heatmap_genes, 30))
            object.__setattr__(self, "image_stride", max(self.image_stride, 8))
        for name in ("n_example_genes", "n_heatmap_genes", "image_stride", "n_patches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")

    def window_for(self, n_rows: int) -> int:
        """Rows per rolling window: WINDOW, or 2% of the rows (at least 10)."""
        return self.window or max(10, n_rows // 50)


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

def row_signals(y: np.ndarray, image_features: pd.DataFrame | None = None, n_pcs: int = 3,
                seed: int = 0) -> pd.DataFrame:
    """Per train row: total expression, the first principal components of the standardised
    expression, and (if given) mean colour of its patch."""
    from sklearn.decomposition import PCA

    y = np.asarray(y, dtype=np.float32)
    z = (y - y.mean(0)) / np.where(y.std(0) > 0, y.std(0), 1)
    n_pcs = min(n_pcs, *z.shape)
    pcs = PCA(n_pcs, svd_solver="randomized", random_state=seed).fit_transform(z)
    frame = pd.DataFrame(pcs, columns=[f"expression PC{i + 1}" for i in range(n_pcs)])
    frame.insert(0, "total expression", y.sum(1))
    if image_features is not None:
        for channel in CHANNELS[:5]:
            frame[f"mean {channel}"] = image_features[f"mean_{channel}"].to_numpy()
    return frame


def jump_scores(x: np.ndarray, window: int) -> np.ndarray:
    """Per row t: squared distance between the mean of the `window` rows before t and the mean of
    the `window` rows from t on, averaged over standardised columns (NaN near the ends)."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    total = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    scores = np.full(len(x), np.nan)
    t = np.arange(window, len(x) - window + 1)
    before = (total[t] - total[t - window]) / window
    after = (total[t + window] - total[t]) / window
    scores[t] = ((before - after) ** 2).mean(1)
    return scores


def find_change_points(x: np.ndarray, window: int, ratio: float = 6.0,
                       max_points: int = 10) -> list[int]:
    """Rows where the signals jump: peaks of jump_scores at least `ratio` × its median, at least
    `window` rows apart, strongest first (at most max_points), returned in row order."""
    scores = jump_scores(x, window)
    if np.isnan(scores).all():
        return []
    floor = ratio * np.nanmedian(scores)
    picks: list[int] = []
    for row in np.argsort(np.nan_to_num(-scores, nan=np.inf), kind="stable"):
        if len(picks) == max_points or not scores[row] >= floor:
            break
        if all(abs(row - p) >= window for p in picks):
            picks.append(int(row))
    return sorted(picks)


def rolling_mean(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """Centred rolling mean over rows (shorter windows at the ends)."""
    return frame.rolling(window, center=True, min_periods=1).mean()


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
