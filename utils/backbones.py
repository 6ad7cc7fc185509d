"""timm backbones by name, their own preprocessing, and pooled features with D4 TTA.

This module imports torch and timm; `import utils` does not import it until it is used.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from utils.paths import resolve

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
    except OSError as err:  # hub download failed: offline, gated model, no token
        raise RuntimeError(f"could not fetch pretrained weights for {name!r} ({err}). Without "
                           "network access set PRETRAINED to a local weights file (or False); "
                           "gated hub models need `huggingface-cli login`.") from err


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
    from utils.data import cache_dir_for, images_fingerprint, load_images
    from utils.io import cached_array

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
