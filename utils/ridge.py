"""Frozen features → standardise → optional PCA → ridge, alpha chosen by the official metric.

One SVD per training set gives the ridge solution for every alpha at once (the same solution
as sklearn's `Ridge(alpha)` on standardised features; a test checks it), so choosing alpha by
nested CV costs little. Predictions are on the original target scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.cv import score_folds
from utils.metric import score


@dataclass
class RidgePath:
    """Ridge fitted for many alphas at once on standardised (optionally PCA-reduced) features."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    components: np.ndarray  # (k, d) right singular vectors
    singular: np.ndarray  # (k,)
    uty: np.ndarray  # (k, g) = U^T (y - y_mean)

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """Predictions (n, genes) on the original target scale for one alpha."""
        z = ((x - self.x_mean) / self.x_scale) @ self.components.T
        shrink = self.singular / (self.singular ** 2 + alpha)
        return ((z * shrink) @ self.uty + self.y_mean).astype(np.float32)


def fit_ridge_path(x: np.ndarray, y: np.ndarray, pca_dim: int | None = None) -> RidgePath:
    """Standardise x, take its SVD (keeping `pca_dim` components if set), project y."""
    x = np.asarray(x, dtype=np.float64)
    x_mean, x_scale = x.mean(axis=0), x.std(axis=0)
    x_scale[x_scale < 1e-12] = 1.0
    y_mean = y.mean(axis=0, dtype=np.float64)
    u, s, vt = np.linalg.svd((x - x_mean) / x_scale, full_matrices=False)
    k = len(s) if pca_dim is None else min(pca_dim, len(s))
    return RidgePath(x_mean, x_scale, y_mean, vt[:k], s[:k], u[:, :k].T @ (y - y_mean))


@dataclass
class RidgeResult:
    """Out-of-fold and test predictions, the CV report and how alpha was chosen."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    alpha: float  # used for the test predictions (best mean-over-folds score)
    fold_alphas: list[float]  # chosen by inner CV inside each outer fold (nested, honest)
    alpha_curve: dict[str, list[float]] = field(default_factory=dict)  # alpha → fold mean


def _alpha_scores(fit: RidgePath, x: np.ndarray, y: np.ndarray,
                  alphas: tuple[float, ...]) -> np.ndarray:
    """The official score of each alpha on one held-out set."""
    return np.array([score(y, fit.predict(x, a))["score"] for a in alphas])


def cv_ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
             alphas: tuple[float, ...], pca_dim: int | None = None,
             splitter: str = "blocks") -> RidgeResult:
    """Nested CV: each outer fold picks alpha on the other folds, then predicts its own rows.

    The test model is fitted on all rows with the alpha whose mean per-fold score is best.
    """
    ids = np.unique(folds)
    fits: dict[frozenset, RidgePath] = {}  # inner fit without {k, j} serves both k and j

    def fit_without(held: frozenset) -> RidgePath:
        if held not in fits:
            rows = ~np.isin(folds, list(held))
            fits[held] = fit_ridge_path(x[rows], y[rows], pca_dim)
        return fits[held]

    oof, curve, fold_alphas = np.zeros(y.shape, np.float32), [], []
    for k in ids:
        inner = np.mean([_alpha_scores(fit_without(frozenset((k, j))), x[folds == j],
                                       y[folds == j], alphas) for j in ids if j != k], axis=0)
        best = alphas[int(np.argmax(inner))]
        outer = fit_without(frozenset((k,)))
        oof[folds == k] = outer.predict(x[folds == k], best)
        curve.append(_alpha_scores(outer, x[folds == k], y[folds == k], alphas))
        fold_alphas.append(best)
    mean_curve = np.mean(curve, axis=0)
    alpha = alphas[int(np.argmax(mean_curve))]
    test_pred = fit_ridge_path(x, y, pca_dim).predict(x_test, alpha)
    return RidgeResult(oof, test_pred, score_folds(y, oof, folds, splitter), alpha, fold_alphas,
                       {"alpha": list(alphas), "score": mean_curve.tolist()})
