"""Models: timm backbones by name (hub pathology presets included) with their own
preprocessing, pooled features with D4 TTA (cached on disk), gene-expression regressors with one
head per gene group, and the correlation-aware losses they train with.

`GeneRegressor` takes uint8 (or 0–255 float) NCHW patches, applies the backbone's own
preprocessing (`Preprocess`, from timm's data config), pools features with the backbone and maps
them with one head per gene group to standardised expression (spots × genes, in the model's gene
order). A head either predicts its genes directly or the top-K principal components of them,
decoded by a fixed matrix (`TARGET = "pca:K"`). Per-gene mean and std are buffers, so a saved
state dict holds everything needed to predict. `ModelSpec` is the JSON recipe to rebuild a model
(`model.json` in a run folder; weights beside it).

The seed team's loss, on standardised targets (spots × genes):
    α·MSE + β·(1 − mean per-gene Pearson r over the batch) + (1−α−β)·MSE(cov(pred), cov(true))
where cov is the gene × gene covariance matrix over the batch. Every term is vectorized, safe for
a batch of one spot and for constant columns (their r counts as 0, as in the metric). With gene
groups each group's loss is computed on its own genes and the groups are averaged weighted by
their size (the covariance term then only pairs genes of one group, as when one model is trained
per group).

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from utils.config import check_loss_weights
from utils.data import cache_dir_for, images_fingerprint, load_images
from utils.paths import cached_array, resolve, write_with
from utils.runs import read_model_info

# Pathology foundation models on the Hugging Face hub, usable as BACKBONE by their preset name.
# They need network access and, for gated ones, an accepted licence and `huggingface-cli login`
# (or a local weights file as PRETRAINED). Layer classes are named, resolved in `resolve_preset`.
HUB_PRESETS: dict[str, dict] = {
    "uni": {"model": "hf-hub:MahmoodLab/uni",  # ViT-L/16, gated
            "kwargs": {"init_values": 1e-5, "dynamic_img_size": True}},
    "uni2-h": {"model": "hf-hub:MahmoodLab/UNI2-h",  # ViT-H/14 with registers, gated
               "kwargs": {"patch_size": 14, "depth": 24, "num_heads": 24,
                          "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                          "no_embed_class": True, "mlp_layer": "SwiGLUPacked",
                          "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True}},
    "h-optimus-0": {"model": "hf-hub:bioptimus/H-optimus-0",  # ViT-g/14, 1.1B parameters
                    "kwargs": {"init_values": 1e-5, "dynamic_img_size": False}},
    "phikon": {"model": "hf-hub:1aurent/vit_base_patch16_224.owkin_pancancer",  # ViT-B/16
               "kwargs": {}},
    "virchow2": {"model": "hf-hub:paige-ai/Virchow2",  # ViT-H/14, gated
                 "kwargs": {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}},
    "prov-gigapath": {"model": "hf-hub:prov-gigapath/prov-gigapath", "kwargs": {}},  # gated
}


def resolve_preset(name: str) -> tuple[str, dict]:
    """A preset name → (timm model name, create_model kwargs); other names pass through."""
    preset = HUB_PRESETS.get(name.lower())
    if preset is None:
        return name, {}
    layers = {"SwiGLUPacked": timm.layers.SwiGLUPacked, "SiLU": nn.SiLU}
    return preset["model"], {k: layers.get(v, v) if isinstance(v, str) else v
                             for k, v in preset["kwargs"].items()}


def create_backbone(name: str, pretrained: bool | str = True, img_size: int | None = None,
                    seed: int = 0, **kwargs) -> nn.Module:
    """A timm model without classifier (`num_classes=0`) that returns pooled features.

    `name` is a timm model name, "hf-hub:<repo>" or a `HUB_PRESETS` name. `pretrained` is True
    (download from the hub), False (random init, seeded) or the path of a local weights file
    (e.g. a Kaggle dataset), loaded through timm's pretrained_cfg_overlay. `img_size` is passed
    to models that take it (ViTs), so position embeddings match.
    """
    torch.manual_seed(seed)
    name, preset_kwargs = resolve_preset(name)
    kwargs = {"num_classes": 0, **preset_kwargs, **kwargs}
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        path = resolve(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"PRETRAINED weights file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        kwargs["pretrained"] = bool(pretrained)
    try:
        return _create(name, img_size, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown timm backbone {name!r}; closest names: "
                             f"{closest_models(name)}") from err
        raise
    except OSError as err:  # the hub refused or could not be reached: say why and what to do
        raise HubAccessError(hub_error_message(name, err)) from None


class HubAccessError(RuntimeError):
    """Pretrained weights could not be fetched from the Hugging Face hub (the message says why
    and what to do)."""


def hub_error_message(name: str, err: OSError) -> str:
    """What went wrong fetching `name`'s weights (gated, not found, offline, other), the model's
    hub page and the fix, with the hub's own reason on one line (no hub traceback)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    repo = name.removeprefix("hf-hub:").split("@")[0] if name.startswith("hf-hub:") else None
    cfg = None if repo else timm.models.get_pretrained_cfg(name)
    repo = repo or getattr(cfg, "hf_hub_id", None) or f"timm/{name}"
    page = f"https://huggingface.co/{repo}"
    login = ("log in on this machine: `from huggingface_hub import login; login()`, or add a "
             "secret HF_TOKEN (Colab: the key icon; Kaggle: Add-ons → Secrets)")
    local = "or set PRETRAINED to a local weights file (e.g. a Kaggle dataset)"
    if isinstance(err, GatedRepoError):
        why = (f"{repo} is a gated model: accept its licence at {page} with your Hugging Face "
               f"account, then {login}; {local}.")
    elif isinstance(err, RepositoryNotFoundError):
        why = (f"the hub has no model {repo} you may read ({page}): check the name; if it is "
               f"gated or private, accept its licence there and {login}; {local}.")
    elif isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or \
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        why = (f"no network access to the hub (offline, or HF_HUB_OFFLINE set) and {repo} is "
               f"not in the local cache: turn the internet on (Kaggle: Settings → Internet), "
               f"{local}, or False for random weights. Model page: {page}.")
    else:
        why = (f"the download failed; check the network and {page}; gated models need their "
               f"licence accepted and a login ({login}); {local}.")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"could not fetch pretrained weights for {name!r}: {why}\n(hub said: {reason})"


def _create(name: str, img_size: int | None, **kwargs) -> nn.Module:
    """timm.create_model, passing img_size only to architectures that accept it."""
    if img_size is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError:  # CNNs take any input size and have no img_size argument
        return timm.create_model(name, **kwargs)


def closest_models(name: str, n: int = 5) -> list[str]:
    """The timm model names closest to a misspelt one."""
    base = name.split(".", 1)[0]
    return difflib.get_close_matches(base, timm.list_models(), n=n, cutoff=0.4)


def data_config(model: nn.Module, img_size: int | None = None) -> dict:
    """The model's own preprocessing (mean, std, interpolation, input size), size overridable."""
    config = timm.data.resolve_model_data_config(model)
    if img_size is not None:
        config["input_size"] = (3, img_size, img_size)
    return config


class Preprocess(nn.Module):
    """uint8 NCHW patches → resized, normalised float batch, on the model's device."""

    def __init__(self, config: dict):
        super().__init__()
        self.size = tuple(config["input_size"][1:])
        self.mode = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.mode, antialias=True,
                              align_corners=False).clamp_(0, 255)
        return (x - self.mean) / self.std


def d4_views(x: torch.Tensor, tta: bool = True) -> Iterator[torch.Tensor]:
    """The 8 dihedral views of a batch (4 rotations × optional flip), or just x."""
    if not tta:
        yield x
        return
    for flipped in (x, x.flip(-1)):
        for k in range(4):
            yield torch.rot90(flipped, k, dims=(-2, -1))


def default_device() -> torch.device:
    """CUDA if available, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype: bf16 on GPUs with native bf16 (Ampere+), fp16 on older ones
    (T4, P100: bf16 would only be emulated there), None (full precision) off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def autocast(device: torch.device):
    """Mixed precision where it pays (see `amp_dtype`); off on CPU and MPS."""
    dtype = amp_dtype(device)
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (a no-op for bf16 and full precision)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def inference_batch_size(device: torch.device) -> int:
    """Patches per forward pass: small on CPU (cache-friendly: 2x faster than 64 on 2 cores)."""
    return 64 if device.type == "cuda" else 16


def extract_features(model: nn.Module, images: np.ndarray, img_size: int | None = None,
                     batch_size: int | None = None, tta: bool = True,
                     device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Pooled features (N, D) float32 of uint8 (N, H, W, 3) patches, averaged over D4 views."""
    from tqdm import tqdm

    device = device or default_device()
    batch_size = batch_size or inference_batch_size(device)
    preprocess = Preprocess(data_config(model, img_size)).to(device)
    # Moved outside inference mode: the weights stay ordinary tensors the model can train with.
    model = model.eval().to(device, memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc="features", mininterval=10,
                          disable=not progress):
            x = torch.from_numpy(np.array(images[start:start + batch_size]))  # off the memmap
            x = preprocess(x.to(device).permute(0, 3, 1, 2))
            with autocast(device):
                views = [model(v).float() for v in d4_views(x, tta)]
            out.append(torch.stack(views).mean(0).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def feature_cache_name(backbone: str, pretrained: bool | str, img_size: int | None, tta: bool,
                       seed: int, split: str) -> str:
    """A file name that identifies what the features were computed with."""
    if isinstance(pretrained, bool):
        weights = "hub" if pretrained else f"random-seed{seed}"
    else:
        weights = "file-" + Path(pretrained).stem
    slug = backbone.replace("hf-hub:", "hf-").replace("/", "--").replace(":", "-")
    return f"{slug}_{weights}_{img_size or 'default'}px_{'d4' if tta else 'noTTA'}_{split}.npy"


def cached_features(data, backbone: str, pretrained: bool | str = True,
                    img_size: int | None = None, tta: bool = True, seed: int = 0,
                    batch_size: int | None = None, cache_dir: str | os.PathLike | None = None,
                    ) -> dict[str, np.ndarray]:
    """Train and test features, computed once per backbone/weights/size/TTA and then cached."""
    folder = Path(cache_dir or cache_dir_for(data)) / "features"
    model: list[nn.Module] = []  # built only if some split is not cached yet

    def compute(images: np.ndarray) -> np.ndarray:
        if not model:
            model.append(create_backbone(backbone, pretrained, img_size, seed))
        return extract_features(model[0], images, img_size, batch_size, tta)

    features = {}
    for split in ("train", "test"):
        name = feature_cache_name(backbone, pretrained, img_size, tta, seed, split)
        key = {"backbone": backbone, "pretrained": str(pretrained), "img_size": img_size,
               "tta": tta, "seed": None if pretrained is not False else seed,
               "images": images_fingerprint(data, split)}
        images = load_images(data, split, cache_dir)
        features[split] = cached_array(folder / name, key, partial(compute, images))
    return features


# --- gene regressors --------------------------------------------------------------------------

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
    folder = resolve(run_dir)
    info = read_model_info(folder)
    if unit not in info["units"]:
        raise ValueError(f"{folder}: no unit {unit!r}; model.json lists {list(info['units'])}")
    entry = info["units"][unit]
    model = build_model(ModelSpec(**entry["spec"]), pretrained=False).to(device)
    return load_weights(model, folder / entry["weights"]).eval()


# --- losses ---------------------------------------------------------------------------------

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
