"""Gene-expression regressors: a timm backbone, one linear head per gene group, target scaling.

`GeneRegressor` takes uint8 (or 0–255 float) NCHW patches, applies the backbone's own
preprocessing (`utils.backbones.Preprocess`), pools features with the backbone and maps them with
one head per gene group to standardised expression (spots × genes, in the model's gene order).
A head either predicts its genes directly or the top-K principal components of them, decoded by
a fixed matrix (`TARGET = "pca:K"`). Per-gene mean and std are buffers, so `to_original` inverts
the scaling and a saved state dict holds everything needed to predict. `ModelSpec` is the JSON
recipe to rebuild a model (`model.json` in a run folder; weights beside it).

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.backbones import Preprocess, create_backbone, data_config


@dataclass
class ModelSpec:
    """What rebuilds a model: backbone, input size, output genes and the heads over them."""

    backbone: str
    img_size: int | None
    genes: list[int]  # column indices into the data's genes, in the model's output order
    heads: dict[str, list[int]]  # head name → positions in `genes` it predicts
    dims: dict[str, int | None] = field(default_factory=dict)  # PCA components per head
    drop_path: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


class GeneHead(nn.Module):
    """Linear map from pooled features to a group's genes, or to K PCs decoded by a fixed matrix."""

    def __init__(self, in_features: int, n_genes: int, dim: int | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, dim or n_genes)
        if dim:
            self.register_buffer("decoder", torch.zeros(dim, n_genes))
        else:
            self.decoder = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.linear(features)
        return out if self.decoder is None else out @ self.decoder


class GeneRegressor(nn.Module):
    """uint8 patches → standardised expression of the model's genes, one head per gene group."""

    def __init__(self, backbone: nn.Module, config: dict, spec: ModelSpec):
        super().__init__()
        self.spec, self.backbone, self.preprocess = spec, backbone, Preprocess(config)
        self.heads = nn.ModuleList(GeneHead(backbone.num_features, len(cols), spec.dims.get(name))
                                   for name, cols in spec.heads.items())
        order = np.argsort(np.concatenate([np.asarray(c) for c in spec.heads.values()]))
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))
        self.register_buffer("y_mean", torch.zeros(len(spec.genes)))
        self.register_buffer("y_std", torch.ones(len(spec.genes)))
        self.frozen: list[nn.Module] = []
        self.freeze_bn = False  # keep every batch norm on its running statistics in training
        self.channels_last = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of raw patches."""
        x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return torch.cat([head(features) for head in self.heads], dim=1)[:, self.order]

    def to_original(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised predictions back on the original expression scale."""
        return z * self.y_std + self.y_mean

    def train(self, mode: bool = True) -> GeneRegressor:
        """Train mode, except frozen backbone stages and, with `freeze_bn`, batch norms: they
        keep normalising with their running statistics, which small batches would corrupt."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def build_model(spec: ModelSpec, pretrained: bool | str = False, seed: int = 0) -> GeneRegressor:
    """A GeneRegressor for a spec; heads are initialised after the backbone, seeded."""
    kwargs = {"drop_path_rate": spec.drop_path} if spec.drop_path else {}
    backbone = create_backbone(spec.backbone, pretrained, spec.img_size, seed, **kwargs)
    torch.manual_seed(seed)
    return GeneRegressor(backbone, data_config(backbone, spec.img_size), spec)


def fit_scaler(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and std of training targets (std 1 for constant genes)."""
    y = np.asarray(y, dtype=np.float64)
    mean, std = y.mean(axis=0), y.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def fit_pca(z: np.ndarray, dim: int) -> np.ndarray:
    """The top `dim` principal axes (dim, genes) of standardised targets (dim capped by rank)."""
    z = np.asarray(z, dtype=np.float64)
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    return vt[:min(dim, len(vt))].astype(np.float32)


def plan_heads(groups: dict[str, np.ndarray], pca: int | None, n_rows: int) -> dict:
    """Head name → its PCA dim (None: direct), capped by the group's genes and training rows."""
    if pca is None:
        return dict.fromkeys(groups)
    return {name: min(pca, len(cols), max(n_rows - 1, 1)) for name, cols in groups.items()}


def set_targets(model: GeneRegressor, y_train: np.ndarray) -> np.ndarray:
    """Fit target scaling (and PCA decoders) on training rows; returns standardised targets."""
    mean, std = fit_scaler(y_train)
    z = ((y_train - mean) / std).astype(np.float32)
    model.y_mean.copy_(torch.from_numpy(mean))
    model.y_std.copy_(torch.from_numpy(std))
    for head, cols in zip(model.heads, model.spec.heads.values()):
        if head.decoder is not None:
            head.decoder.copy_(torch.from_numpy(fit_pca(z[:, cols], head.decoder.shape[0])))
    return z


def init_heads_ridge(model: GeneRegressor, features: np.ndarray, z: np.ndarray,
                     alpha: float, pca_dim: int | None = None) -> None:
    """Set every head to the ridge solution on frozen features (linear probe, then fine-tune)."""
    from utils.ridge import fit_ridge_path

    for head, cols in zip(model.heads, model.spec.heads.values()):
        target = z[:, cols]
        if head.decoder is not None:
            target = target @ head.decoder.cpu().numpy().T  # PCA scores
        fit = fit_ridge_path(features, target, pca_dim)
        coef = fit.components.T @ ((fit.singular / (fit.singular ** 2 + alpha))[:, None]
                                   * fit.uty)  # (features, outputs) on standardised features
        weight = coef / fit.x_scale[:, None]
        bias = fit.y_mean - fit.x_mean @ weight
        head.linear.weight.data.copy_(torch.from_numpy(weight.T.astype(np.float32)))
        head.linear.bias.data.copy_(torch.from_numpy(bias.astype(np.float32)))


def freeze_stages(model: GeneRegressor, n_stages: int) -> list[str]:
    """Freeze the stem and the first stages of the backbone (timm's coarse parameter groups).

    Frozen parameters get no gradient and their batch-norm statistics stay fixed. Returns the
    frozen parameter names.
    """
    if n_stages <= 0:
        return []
    from timm.models import group_parameters

    backbone = model.backbone
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    names = [name for gid in sorted(groups)[:n_stages] for name in groups[gid]]
    params, modules = dict(backbone.named_parameters()), dict(backbone.named_modules())
    for name in names:
        params[name].requires_grad_(False)
    model.frozen = [modules[name.rpartition(".")[0]] for name in names
                    if name.rpartition(".")[0] in modules]
    return names


def save_weights(model: GeneRegressor, path: str | os.PathLike) -> Path:
    """Write the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from utils.io import write_with

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_with(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(model: GeneRegressor, path: str | os.PathLike) -> GeneRegressor:
    """Load a safetensors state dict written by `save_weights` into a model of the same spec."""
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model


def load_unit_model(run_dir: str | os.PathLike, unit: str,
                    device: torch.device | str = "cpu") -> GeneRegressor:
    """Rebuild a trained model of a run folder from `model.json` and `weights/<unit>.safetensors`.

    `unit` is e.g. "fold0" (GROUP_MODE="heads") or "fold0-<group>" (GROUP_MODE="models"); the
    units of a run are listed in model.json. Backbone weights come from the file, not the hub.
    """
    from utils.io import read_json
    from utils.paths import resolve

    folder = resolve(run_dir)
    info = read_json(folder / "model.json")
    if unit not in info["units"]:
        raise ValueError(f"{folder}: no unit {unit!r}; model.json lists {list(info['units'])}")
    entry = info["units"][unit]
    model = build_model(ModelSpec(**entry["spec"]), pretrained=False).to(device)
    return load_weights(model, folder / entry["weights"]).eval()
