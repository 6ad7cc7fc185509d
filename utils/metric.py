"""The DACON four-part Pearson score.

score = mean(cells, max_gene, heg50, hvg50) where
- cells:    per-spot Pearson r across genes, averaged over spots;
- max_gene: the largest per-gene Pearson r across spots;
- heg50:    mean per-gene r over the 50 genes with the highest total true expression;
- hvg50:    mean per-gene r over the 50 genes with the highest true variance.
A constant row or column has an undefined r; it counts as 0, as on the leaderboard.
"""

from __future__ import annotations

import numpy as np

PARTS = ("cells", "max_gene", "heg50", "hvg50")
KEYS = ("score", *PARTS, "mean_gene")


def _moments(a: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Sums and centred (co)variance sums of a and b along `axis`, in a few passes.

    Raw moments are fast; slices whose spread is tiny next to their mean (where raw moments
    lose precision, constant ones included) are redone exactly.
    """
    n = a.shape[axis]
    spec = "ij,ij->j" if axis == 0 else "ij,ij->i"
    sa, sb = a.sum(axis=axis), b.sum(axis=axis)
    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
        raise ValueError("y_true and y_pred must be finite (found NaN or inf)")
    ssa = np.einsum(spec, a, a) - sa * sa / n
    ssb = np.einsum(spec, b, b) - sb * sb / n
    sab = np.einsum(spec, a, b) - sa * sb / n
    shaky = (ssa <= 1e-8 * sa * sa / n) | (ssb <= 1e-8 * sb * sb / n)
    if shaky.any():
        idx = np.flatnonzero(shaky)
        sub_a, sub_b = np.take(a, idx, axis=1 - axis), np.take(b, idx, axis=1 - axis)
        ssa[idx], ssb[idx], sab[idx] = _centered_moments(sub_a, sub_b, axis, spec)
    return sa, ssa, ssb, sab


def _centered_moments(a: np.ndarray, b: np.ndarray, axis: int,
                      spec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact centred sums of squares and cross-products; exactly constant slices get 0."""
    a_constant, b_constant = np.ptp(a, axis=axis) == 0, np.ptp(b, axis=axis) == 0
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (np.where(a_constant, 0.0, np.einsum(spec, a, a)),
            np.where(b_constant, 0.0, np.einsum(spec, b, b)), np.einsum(spec, a, b))


def pearson_from_moments(ssa: np.ndarray, ssb: np.ndarray, sab: np.ndarray) -> np.ndarray:
    """Pearson r from centred sums of squares (ssa, ssb) and cross-products (sab), elementwise;
    undefined (a constant slice: a zero sum of squares) → 0, as on the leaderboard."""
    den = np.sqrt(np.clip(ssa, 0, None) * np.clip(ssb, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, sab / den, 0.0)


def pearson_genes(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-gene (column) Pearson r across spots; constant columns give 0."""
    return pearson_from_moments(*_moments(*_as_pair(y_true, y_pred), axis=0)[1:])




def top_genes(y_true: np.ndarray, n: int = 50) -> dict[str, np.ndarray]:
    """Column indices of the n most expressed (total) and n most variable true genes."""
    y_true = np.asarray(y_true, dtype=np.float64)
    return _rank_genes(y_true.sum(axis=0), y_true.var(axis=0), n)


def _rank_genes(total: np.ndarray, var: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The n genes with the highest total and the n with the highest variance (ties: first)."""
    n = min(n, len(total))
    return {"heg50": np.argsort(-total, kind="stable")[:n],
            "hvg50": np.argsort(-var, kind="stable")[:n]}


def score(y_true: np.ndarray, y_pred: np.ndarray, n_top: int = 50) -> dict[str, float]:
    """Every part of the four-part score, plus the mean per-gene r (`mean_gene`)."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    total, ss_true, ss_pred, ss_cross = _moments(y_true, y_pred, axis=0)
    r_gene = pearson_from_moments(ss_true, ss_pred, ss_cross)
    r_spot = pearson_from_moments(*_moments(y_true, y_pred, axis=1)[1:])
    top = _rank_genes(total, ss_true, n_top)
    parts = {
        "cells": float(r_spot.mean()),
        "max_gene": float(r_gene.max()),
        "heg50": float(r_gene[top["heg50"]].mean()),
        "hvg50": float(r_gene[top["hvg50"]].mean()),
    }
    return {"score": float(np.mean([parts[k] for k in PARTS])), **parts,
            "mean_gene": float(r_gene.mean())}


def max_gene_floor(y_true: np.ndarray, y_pred: np.ndarray, n_shuffles: int = 5,
                   seed: int = 0) -> float:
    """Max per-gene r that row-shuffled predictions reach: what `max_gene` gets from noise."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    rng = np.random.default_rng(seed)
    maxima = [pearson_genes(y_true, y_pred[rng.permutation(len(y_pred))]).max()
              for _ in range(n_shuffles)]
    return float(np.mean(maxima))




def _as_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 2-D of the same shape, or a clear error."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 2-D of one shape (spots, genes); got "
                         f"{y_true.shape} and {y_pred.shape}")
    return y_true, y_pred
