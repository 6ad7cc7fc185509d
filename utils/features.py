"""Frozen features for ridge and retrieval: pooled backbone embeddings with D4 TTA, richer
variants, stain normalisation, and their cache on disk.

A `FeatureSpec` (utils.config; `TrainConfig.feature_spec` builds it from 05's parameters) names a
feature set: backbone, weights, input size, TTA, magnification, stages, crops, stain
normalisation and the cache's dtype. `extract_features` computes it for a model and a stack of
patches; `cached_features` computes a data folder's train and test features once and reads them
back from `<cache>/features/<spec.tag>_<split>.npy` while the images and the spec are unchanged.

Frozen features can be richer than the pooled embedding: FEATURE_STAGES adds the average-pooled
maps of chosen backbone stages (timm's `forward_intermediates`, CNNs and ViTs), FEATURE_CROPS
concatenates the features of centre crops resized up to the input, and STAIN_NORM="macenko"
normalises every patch (torchstain) to a stain reference fitted, without labels, on training
patches; patches with too little tissue are kept as they are and counted. Each is part of the
spec's tag and cache key (nothing at its default).

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.bootstrap import ensure
from utils.choices import COMPILE_MIN_PASSES, TTA_VIEWS, check_compile
from utils.config import FeatureSpec
from utils.data import cache_dir_for, images_content_key, load_images
from utils.files import cached_array, read_json, write_json
from utils.loop import autocast, default_device, inference_batch_size
from utils.models import (
    Preprocess,
    centre_crop,
    create_backbone,
    data_config,
    embed,
    stage_indices,
    tta_views,
)

# --- extraction -------------------------------------------------------------------------------


def batch_from_memory(free_bytes: int, per_image_bytes: int, cap: int = 1024) -> int:
    """The largest power of two of patches whose activations fill half the free memory."""
    fit = max(1, int(0.5 * free_bytes // max(per_image_bytes, 1)))
    return min(cap, 1 << (fit.bit_length() - 1))


def auto_batch_size(model: nn.Module, preprocess: nn.Module, image_shape: tuple,
                    device: torch.device) -> int:
    """Inference batch size from free GPU memory (`torch.cuda.mem_get_info`) and the measured
    peak memory of a 2-patch forward pass; the CPU default elsewhere."""
    if device.type != "cuda":
        return inference_batch_size(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), autocast(device):
        model(preprocess(torch.zeros((2, *image_shape), dtype=torch.uint8, device=device)))
    per_image = (torch.cuda.max_memory_allocated(device) - base) // 2
    return batch_from_memory(torch.cuda.mem_get_info(device)[0], per_image)



class CompileWarning(UserWarning):
    """torch.compile could not compile the backbone; extraction went on without it."""


def should_compile(compile_: bool | str, device: torch.device, n_passes: int) -> bool:
    """COMPILE's rule: True always, False never, "auto" on CPU for an extraction of at least
    COMPILE_MIN_PASSES forward passes (a one-off compile of ~5–50 s then pays for itself: 1.8x
    on 2 cores, benchmarks/results/speed.csv; on a GPU it is unmeasured, so "auto" leaves it
    off)."""
    check_compile(compile_)
    if compile_ == "auto":
        return device.type == "cpu" and n_passes >= COMPILE_MIN_PASSES
    return bool(compile_)


def feature_forward(model: nn.Module, indices: list[int] | None,
                    compiled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """`embed(model, ·, indices)`, through `torch.compile` (static shapes) if `compiled`. A
    runtime that cannot compile (no C++ compiler, an unsupported op) fails on the first batch:
    that batch and the rest are then computed eagerly, with a CompileWarning saying why."""
    eager = partial(embed, model, indices=indices)
    if not compiled:
        return eager
    fast = torch.compile(eager, dynamic=False)
    chosen: list[Callable] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        if chosen:
            return chosen[0](x)
        try:
            out = fast(x)
            chosen.append(fast)
            return out
        except Exception as err:  # noqa: BLE001 (any backend failure: extract eagerly)
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"COMPILE: torch.compile failed ({type(err).__name__}: {reason}); "
                          "extracting features without it (set COMPILE = False to skip the "
                          "attempt)", CompileWarning, stacklevel=2)
            chosen.append(eager)
            return eager(x)

    return forward


def split_tiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) images as (B·n², C, H // n, W // n): each image's n × n grid of tiles, row
    by row, at the image's resolution (the last H % n rows and W % n columns left out)."""
    b, c, h, w = x.shape
    th, tw = h // n, w // n
    grid = x[:, :, :th * n, :tw * n].reshape(b, c, n, th, n, tw)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, th, tw)


def pool_tiles(features: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """(B·n_tiles, D) tile features as (B, 2D): each image's mean over its tiles, then its max
    (DeepSpot's sub-spot bag, pooled without learning)."""
    bag = features.reshape(-1, n_tiles, features.shape[1])
    return torch.cat([bag.mean(dim=1), bag.amax(dim=1)], dim=1)


def extract_features(model: nn.Module, images: np.ndarray, spec: FeatureSpec,
                     batch_size: int | None = None, device: torch.device | None = None,
                     progress: bool = True, compile: bool | str = "auto",
                     tiles_only: bool = False) -> np.ndarray:
    """Pooled features (N, D) float32 of uint8 (N, H, W, 3) patches as `spec` says: at its input
    size, averaged over the D4 views with TTA, patches rescaled from `mpp` to `model_mpp` µm/px
    when that is set (`Preprocess`). Its `stages` add the average-pooled maps of those backbone
    stages before the pooled embedding (`embed`); its `crops` concatenate the features of each
    centre crop, a fraction of the patch side resized to the input (1.0: the whole patch). Its
    `tiles` n > 1 then add the mean and the max over the n × n tiles of the input-sized patch,
    each tile encoded at that resolution (same stages and TTA); `tiles_only`: those alone. The
    spec's backbone and weights are the caller's to build (`model`). `compile` is COMPILE
    (`should_compile`); compiled, the last batch is padded to the batch size (one shape, one
    compile) and the features equal the eager ones to float tolerance."""
    from tqdm.auto import tqdm

    device = device or default_device()
    config = data_config(model, spec.img_size, spec.mpp, spec.model_mpp, spec.mpp_fit)
    preprocess = Preprocess(config).to(device)
    # Moved outside inference mode: the weights stay ordinary tensors the model can train with.
    model = model.eval().to(device, memory_format=torch.channels_last)
    indices = stage_indices(model, spec.stages)
    shape = (images.shape[3], *images.shape[1:3]) if len(images) else (3, 1, 1)
    batch_size = batch_size or auto_batch_size(model, preprocess, shape, device)
    crops = () if tiles_only else spec.crops
    n_passes = len(crops) + (spec.tiles > 1)  # a grid of tiles costs about one whole patch
    compiled = should_compile(compile, device, len(images) * TTA_VIEWS[spec.tta] * n_passes)
    forward = feature_forward(model, indices, compiled)
    if compiled and progress:
        print(f"COMPILE={compile!r}: {type(model).__name__} runs through torch.compile (the first "
              "batch waits for a one-off compile, ~5-50 s)", flush=True)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc="features", mininterval=10,
                          disable=not progress):
            x = torch.from_numpy(np.array(images[start:start + batch_size]))  # off the memmap
            n = len(x)
            if compiled and n < batch_size:  # the compiled shape: repeat the last patch
                x = torch.cat([x, x[-1:].expand(batch_size - n, *x.shape[1:])])
            x = x.to(device).permute(0, 3, 1, 2)
            parts = [view_mean(forward, preprocess(centre_crop(x, fraction)), spec.tta, device)
                     for fraction in crops]
            if spec.tiles > 1:
                tiles = split_tiles(preprocess(x), spec.tiles)
                parts.append(pool_tiles(view_mean(forward, tiles, spec.tta, device),
                                        spec.tiles ** 2))
            out.append(torch.cat(parts, dim=1)[:n].cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def view_mean(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
              tta: bool | str, device: torch.device) -> torch.Tensor:
    """Features of a preprocessed batch averaged over its TTA views."""
    with autocast(device):
        views = [forward(v.contiguous(memory_format=torch.channels_last)).float()
                 for v in tta_views(batch, tta)]  # one layout: one graph
    return torch.stack(views).mean(0)


# --- stain normalisation (STAIN_NORM) ---------------------------------------------------------

STAIN_IO, STAIN_BETA, MIN_TISSUE = 240, 0.15, 0.05  # torchstain's Io and beta; tissue share


def tissue_fraction(patch: np.ndarray, beta: float = STAIN_BETA) -> float:
    """Share of a uint8 HWC patch's pixels with optical density ≥ beta in every channel (the
    pixels Macenko estimates stains from)."""
    od = -np.log((patch.reshape(-1, 3).astype(np.float32) + 1) / STAIN_IO)
    return float(np.all(od >= beta, axis=1).mean())


def stain_normaliser(reference: dict | None = None):
    """A torchstain Macenko normaliser (torch backend), with `reference` stains if given."""
    ensure("torchstain", "05's STAIN_NORM")  # on first use: the bundle or PyPI
    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    normaliser = TorchMacenkoNormalizer()
    if reference is not None:
        normaliser.HERef = torch.tensor(reference["stains"], dtype=torch.float32)
        normaliser.maxCRef = torch.tensor(reference["max_concentrations"], dtype=torch.float32)
    return normaliser


def fit_stain_reference(images: np.ndarray, n_sample: int = 64) -> dict:
    """A label-free Macenko reference from training patches: the element-wise median of the
    stain matrices (3 × 2, H and E) and 99th-percentile concentrations fitted on up to
    `n_sample` evenly spaced patches with enough tissue (patches where the fit fails skipped)."""
    normaliser, stains, maxima = stain_normaliser(), [], []
    candidates = [i for i in np.linspace(0, len(images) - 1, min(len(images), 4 * n_sample),
                                         dtype=int) if tissue_fraction(images[i]) >= MIN_TISSUE]
    for i in candidates[:: max(1, len(candidates) // n_sample)][:n_sample]:
        try:
            normaliser.fit(torch.from_numpy(np.array(images[i])).permute(2, 0, 1))
        except (RuntimeError, ValueError, IndexError):
            continue
        if torch.isfinite(normaliser.HERef).all() and torch.isfinite(normaliser.maxCRef).all():
            stains.append(normaliser.HERef.numpy())
            maxima.append(normaliser.maxCRef.numpy())
    if not stains:
        raise ValueError("STAIN_NORM='macenko': no training patch has enough tissue to fit a "
                         "stain reference; use STAIN_NORM=None")
    return {"stains": np.median(stains, axis=0).tolist(),
            "max_concentrations": np.median(maxima, axis=0).tolist(), "n_fitted": len(stains)}


def normalise_stains(images: np.ndarray, reference: dict) -> tuple[np.ndarray, int]:
    """Macenko-normalised copies of uint8 (N, H, W, 3) patches to `reference`, and how many were
    kept as they are: patches with too little tissue (background) or where the fit fails."""
    normaliser, out, kept = stain_normaliser(reference), np.empty_like(images), 0
    for i, patch in enumerate(images):
        patch = np.array(patch)  # a writable copy (off a memmap)
        out[i] = patch
        if tissue_fraction(patch) < MIN_TISSUE:
            kept += 1
            continue
        try:
            norm, _, _ = normaliser.normalize(torch.from_numpy(patch).permute(2, 0, 1),
                                              Io=STAIN_IO, beta=STAIN_BETA, stains=False)
        except (RuntimeError, ValueError, IndexError):
            kept += 1
            continue
        if (norm < 0).any():  # a NaN fit: torchstain casts to int, NaN becomes negative
            kept += 1
            continue
        out[i] = norm.clamp(0, 255).to(torch.uint8).numpy()
    return out, kept



# --- the cache --------------------------------------------------------------------------------

def cache_entry(data, split: str, spec: FeatureSpec) -> tuple[str, dict]:
    """The cache file name and key of one split's features (what `cached_features` reads)."""
    train_images = images_content_key(data, "train") if spec.stain_norm else None
    return spec.cache_name(split), spec.cache_key(images_content_key(data, split), train_images)


def cached_features(data, spec: FeatureSpec, batch_size: int | None = None,
                    cache_dir: str | os.PathLike | None = None, compile: bool | str = "auto",
                    splits: tuple[str, ...] = ("train", "test")) -> dict[str, np.ndarray]:
    """Train and test features of a spec, computed once and then read from the cache;
    `dtype="float16"` halves the cache (HEST's way for 1–2.5 k-dim foundation-model
    embeddings); they are returned as float32 either way. The model is built only if some
    split is not cached yet; `compile` is COMPILE (`extract_features`). With FEATURE_TILES the
    whole-patch columns are the spec's without tiles (shared with it) and the file named after
    this spec holds the tiles' columns alone. A row subset of some data (`utils.data.rows_of`)
    gets its rows of the full data's features (of only the full data's splits it draws rows
    from)."""
    if getattr(data, "source", None) is not None and cache_dir is None and not spec.stain_norm:
        parts = tuple(dict.fromkeys(data.rows[split][0] for split in splits))
        full = cached_features(data.source, spec, batch_size, None, compile, parts)
        return {split: full[data.rows[split][0]][data.rows[split][1]] for split in splits}
    folder = Path(cache_dir or cache_dir_for(data)) / "features"
    model: list[nn.Module] = []
    whole = cached_features(data, replace(spec, tiles=1), batch_size, cache_dir, compile,
                            splits) if spec.tiles > 1 else None

    def compute(images: np.ndarray, split: str) -> np.ndarray:
        if not model:
            model.append(create_backbone(spec.backbone, spec.pretrained, spec.img_size,
                                         spec.seed))
        if spec.stain_norm:
            images = stain_normalised(data, images, split, cache_dir, folder)
        return extract_features(model[0], images, spec, batch_size, compile=compile,
                                tiles_only=whole is not None).astype(spec.dtype)

    features = {}
    for split in splits:
        name, key = cache_entry(data, split, spec)
        images = load_images(data, split, cache_dir)
        features[split] = cached_array(folder / name, key, partial(compute, images, split)
                                       ).astype(np.float32)
        if whole is not None:
            features[split] = np.concatenate([whole[split], features[split]], axis=1)
    return features


def stain_normalised(data, images: np.ndarray, split: str, cache_dir: str | os.PathLike | None,
                     folder: Path) -> np.ndarray:
    """A split's patches Macenko-normalised to a reference fitted on the train patches (saved,
    with how many patches of each split were kept as they are, in `stain_reference.json`)."""
    path = folder / "stain_reference.json"
    train_key = images_content_key(data, "train")
    saved = read_json(path) if path.is_file() else {}
    if saved.get("train_images") != train_key:
        reference = fit_stain_reference(load_images(data, "train", cache_dir))
        saved = {"train_images": train_key, "reference": reference, "kept_as_is": {}}
    out, kept = normalise_stains(images, saved["reference"])
    saved["kept_as_is"][split] = {"patches": len(images), "kept": kept}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, saved)
    print(f"STAIN_NORM='macenko': {kept} of {len(images)} {split} patches kept as they are "
          f"(background or failed fit); reference from {saved['reference']['n_fitted']} train "
          f"patches ({path})", flush=True)
    return out
