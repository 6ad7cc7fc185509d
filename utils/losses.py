"""Correlation-aware regression losses for gene expression (torch), by name and weights.

The seed team's loss, on standardised targets (spots × genes):
    α·MSE + β·(1 − mean per-gene Pearson r over the batch) + (1−α−β)·MSE(cov(pred), cov(true))
where cov is the gene × gene covariance matrix over the batch. Every term is vectorized, safe for
a batch of one spot and for constant columns (their r counts as 0, as in the metric), and is
unit-tested against numpy. With gene groups each group's loss is computed on its own genes and
the groups are averaged weighted by their size (the covariance term then only pairs genes of
one group, as when one model is trained per group).

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from utils.config import check_loss_weights

TERMS = ("mse", "pearson", "cov")
EPS = 1e-8


def mse_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all entries."""
    return (pred - target).pow(2).mean()


def pearson_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over genes of the Pearson r across the batch's spots (constant columns: r = 0)."""
    p = pred - pred.mean(dim=0, keepdim=True)
    t = target - target.mean(dim=0, keepdim=True)
    r = (p * t).sum(dim=0) * torch.rsqrt(p.pow(2).sum(dim=0) * t.pow(2).sum(dim=0) + EPS)
    return 1.0 - r.mean()


def covariance_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the gene × gene covariance matrices of pred and target.

    ||PᵀP − TᵀT||² = ||PPᵀ||² − 2||PTᵀ||² + ||TTᵀ||² for centred P, T, so only spot × spot
    Gram matrices are formed: O(batch² · genes) time and memory instead of O(genes²).
    """
    n, genes = pred.shape
    p = pred - pred.mean(dim=0, keepdim=True)
    t = target - target.mean(dim=0, keepdim=True)
    squared = (p @ p.T).pow(2).sum() - 2 * (p @ t.T).pow(2).sum() + (t @ t.T).pow(2).sum()
    return squared.clamp_min(0) / (max(n - 1, 1) ** 2 * genes ** 2)


class GeneLoss(nn.Module):
    """α·MSE + β·(1 − Pearson) + (1−α−β)·covariance MSE, per gene group, size-weighted."""

    def __init__(self, weights: Sequence[float] = (1.0, 0.0),
                 groups: Sequence[np.ndarray] | None = None):
        super().__init__()
        alpha, beta = check_loss_weights(weights)
        self.weights = {"mse": alpha, "pearson": beta, "cov": max(0.0, 1.0 - alpha - beta)}
        self.groups = [torch.as_tensor(np.asarray(g), dtype=torch.long) for g in groups or []]

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss and each unweighted term (detached, NaN if not computed)."""
        pred, target = pred.float(), target.float()
        if not self.groups:
            return self._combine(pred, target)
        total, genes = pred.new_zeros(()), pred.shape[1]
        parts = {k: pred.new_zeros(()) for k in TERMS}
        for index in self.groups:
            index = index.to(pred.device)
            loss, group_parts = self._combine(pred[:, index], target[:, index])
            share = len(index) / genes
            total = total + share * loss
            parts = {k: parts[k] + share * group_parts[k] for k in TERMS}
        return total, parts

    def _combine(self, pred: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the terms that have a weight (others are not computed)."""
        functions = {"mse": mse_term, "pearson": pearson_term, "cov": covariance_term}
        values = {k: functions[k](pred, target) for k in TERMS if self.weights[k] > 0}
        total = sum(self.weights[k] * v for k, v in values.items())
        nan = pred.new_full((), float("nan"))
        return total, {k: values[k].detach() if k in values else nan for k in TERMS}


def create_loss(weights: Sequence[float],
                groups: Sequence[np.ndarray] | None = None) -> GeneLoss:
    """The training loss for LOSS_WEIGHTS = (α, β), optionally per gene group."""
    return GeneLoss(weights, groups)
