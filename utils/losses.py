"""Fine-tuning losses by name: a registry of loss terms on standardised targets (spots × genes),
combined by the weights of `LOSS`, e.g. `{"mse": 0.3, "pearson": 0.6, "covariance": 0.1}` (the
DACON winners' loss, the default).

| term | value | what it rewards |
|---|---|---|
| `mse` | mean squared error | every value close |
| `pearson` | 1 − mean over genes of r across the batch's spots | the metric's per-gene parts |
| `spot_pearson` | 1 − mean over spots of r across genes | the metric's `cells` part |
| `covariance` | MSE of the gene × gene covariance matrices over the batch | co-expression |

Every term is vectorised and safe for a batch of one spot and for constant rows or columns
(their r counts as 0, as in the metric). With gene groups each group's loss is computed on its
own genes and the groups are averaged weighted by their size (the covariance term then only
pairs genes of one group, as when one model is trained per group). A new term is a function
`(pred, target) → scalar tensor` added to `LOSS_TERMS`.

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from utils.choices import check_loss

EPS = 1e-8


def mse_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all entries."""
    return (pred - target).pow(2).mean()


def _mean_r(pred: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean Pearson r along `dim` (dim 0: per column across rows); constant vectors give r = 0."""
    p = pred - pred.mean(dim=dim, keepdim=True)
    t = target - target.mean(dim=dim, keepdim=True)
    r = (p * t).sum(dim=dim) * torch.rsqrt(p.pow(2).sum(dim=dim) * t.pow(2).sum(dim=dim) + EPS)
    return r.mean()


def pearson_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over genes of the Pearson r across the batch's spots (constant columns: r = 0)."""
    return 1.0 - _mean_r(pred, target, 0)


def spot_pearson_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over spots of the Pearson r across genes: what the metric's `cells` part scores
    (on standardised targets, so every gene weighs the same in a spot's profile)."""
    return 1.0 - _mean_r(pred, target, 1)


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


LOSS_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse_term, "pearson": pearson_term, "spot_pearson": spot_pearson_term,
    "covariance": covariance_term,
}


def list_losses() -> list[str]:
    """The loss term names LOSS accepts."""
    return list(LOSS_TERMS)


class GeneLoss(nn.Module):
    """The weighted sum of the LOSS terms, per gene group, groups weighted by their size."""

    def __init__(self, weights: Mapping[str, float],
                 gene_groups: Sequence[np.ndarray] | None = None):
        super().__init__()
        self.weights = check_loss(weights)
        self.terms = tuple(self.weights)
        self.groups = [torch.as_tensor(np.asarray(g), dtype=torch.long)
                       for g in gene_groups or []]

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss and each unweighted term (detached; NaN for a term of weight 0)."""
        pred, target = pred.float(), target.float()
        if not self.groups:
            return self._combine(pred, target)
        total, genes = pred.new_zeros(()), pred.shape[1]
        parts = {k: pred.new_zeros(()) for k in self.terms}
        for index in self.groups:
            index = index.to(pred.device)
            loss, group_parts = self._combine(pred[:, index], target[:, index])
            share = len(index) / genes
            total = total + share * loss
            parts = {k: parts[k] + share * group_parts[k] for k in self.terms}
        return total, parts

    def _combine(self, pred: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the terms that have a weight (others are not computed)."""
        values = {k: LOSS_TERMS[k](pred, target) for k in self.terms if self.weights[k] > 0}
        total = sum(self.weights[k] * v for k, v in values.items())
        nan = pred.new_full((), float("nan"))
        return total, {k: values[k].detach() if k in values else nan for k in self.terms}


def create_loss(weights: Mapping[str, float],
                gene_groups: Sequence[np.ndarray] | None = None) -> GeneLoss:
    """The training loss for LOSS (term name → weight), optionally per gene group."""
    return GeneLoss(weights, gene_groups)
