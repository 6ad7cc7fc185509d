"""Grad-CAM of a `GeneRegressor`, every target of a batch from one forward pass.

Per batch: one forward pass of the model (with the preprocessing it was trained with) records
the target layer's output (`utils.cam_layers.choose_layer`); then one backward pass per target,
from the target (a weighted sum of the model's outputs) to that layer only; the pytorch-grad-cam
method turns activations and gradients into maps. A target's CAM is therefore exactly what the
library computes for it alone, at a fraction of the cost for many targets.

This module imports torch and pytorch-grad-cam (on use); `import utils` does not import it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.cam import METHODS, SCALES, check_method, fold_units, read_model_info, split_targets
from utils.cam_layers import LayerChoice, choose_layer


def make_method(name: str, model: nn.Module, layer: nn.Module):
    """A pytorch-grad-cam method object by name (see `utils.cam.list_methods`); its own hooks
    are removed, since `compute_cams` runs the passes for every target at once."""
    import pytorch_grad_cam

    cam = getattr(pytorch_grad_cam, METHODS[check_method(name)])(model, [layer])
    cam.activations_and_grads.release()
    return cam


class LayerTap:
    """Forward hook that makes a layer's output the start of the autograd graph (nothing before
    it is recorded) and keeps it, so gradients of any target can be taken with respect to it."""

    def __init__(self, module: nn.Module):
        self.module, self.output, self.handle = module, None, None

    def _hook(self, module, inputs, output):
        self.output = output.detach().requires_grad_(True)
        return self.output.clone()  # later in-place ops act on a copy, never on the leaf

    def __enter__(self) -> LayerTap:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@contextmanager
def no_parameter_grads(model: nn.Module):
    """Parameters need no gradients for a CAM: switch them off, then restore the flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def output_weights(model: nn.Module, weights: np.ndarray,
                   scale: str = "standardised") -> tuple[torch.Tensor, torch.Tensor]:
    """Targets as (weights over the model's outputs, offset): on the standardised scale the
    model predicts, or on the original expression scale (genes weighted by their std)."""
    if scale not in SCALES:
        raise ValueError(f"SCALE={scale!r}: choose from {SCALES}")
    w = torch.as_tensor(weights, dtype=torch.float32, device=model.y_std.device)
    if scale == "standardised":
        return w, torch.zeros(len(w), device=w.device)
    return w * model.y_std, w @ model.y_mean


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """ReLU, then each map scaled to [0, 1] (pytorch-grad-cam's convention); all-zero stays 0."""
    maps = np.maximum(maps, 0).astype(np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / (1e-7 + maps.max(axis=(-2, -1), keepdims=True) - low)


def cam_batch(cam, x: torch.Tensor, tap: LayerTap, choice: LayerChoice,
              scores: torch.Tensor) -> np.ndarray:
    """(targets, B, h, w) maps of one batch: one backward pass per target to the layer only."""
    acts = choice.reshape(tap.output).detach().cpu().numpy()
    if not cam.uses_gradients:  # EigenCAM: the same map for every target
        one = cam.get_cam_image(x, choice.module, None, acts, None, False)
        return np.broadcast_to(normalise_maps(one), (scores.shape[1], *one.shape)).copy()
    maps = []
    for t in range(scores.shape[1]):
        grad, = torch.autograd.grad(scores[:, t].sum(), tap.output,
                                    retain_graph=t < scores.shape[1] - 1)
        grads = choice.reshape(grad).cpu().numpy()
        maps.append(cam.get_cam_image(x, choice.module, None, acts, grads, False))
    return normalise_maps(np.stack(maps))


def compute_cams(model: nn.Module, images: np.ndarray, weights: np.ndarray, choice: LayerChoice,
                 method: str = "GradCAM", scale: str = "standardised",
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CAMs (targets, N, h, w) in [0, 1] and target values (targets, N) of uint8 (N, H, W, 3)
    patches; `weights` (targets, outputs) defines each target as a weighted sum of outputs."""
    from utils.backbones import inference_batch_size

    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    cam = make_method(method, model, choice.module)
    w, offset = output_weights(model, weights, scale)
    maps, values = [], []
    with LayerTap(choice.module) as tap, no_parameter_grads(model), torch.enable_grad():
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size])  # copy off the memmap
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
            scores = model.eval()(x).float() @ w.T  # model applies its own preprocessing
            maps.append(cam_batch(cam, x, tap, choice, scores))
            values.append((scores + offset).detach().cpu().numpy().T)
    return np.concatenate(maps, axis=1), np.concatenate(values, axis=1)


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (..., h, w) resized bilinearly to (..., H, W), e.g. a patch's size."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*maps.shape[:-2], *size).numpy()


def explain_run(run_dir: str | os.PathLike, fold: int, images: np.ndarray, weights: np.ndarray,
                method: str = "GradCAM", layer: str | None = None, reshape: str | None = None,
                scale: str = "standardised", batch_size: int | None = None,
                device: torch.device | str | None = None) -> dict:
    """CAMs of targets (`weights`: targets × the data's genes) with the fold's model(s) of a
    fine-tuning run: {"maps": (T, N, h, w), "scores": (T, N), "layers": {unit: layer}}."""
    from utils.backbones import default_device
    from utils.models import load_unit_model

    if not len(weights):
        raise ValueError("no targets to explain: list genes, groups or heg50/hvg50 in TARGETS")
    device = device or default_device()
    parts = split_targets(weights, fold_units(read_model_info(run_dir), fold))
    maps, scores, layers = 0.0, 0.0, {}
    for unit, (w, share) in parts.items():
        used = share > 0
        if not used.any():
            continue
        model = load_unit_model(run_dir, unit, device)
        choice = choose_layer(model.backbone, model.preprocess.size, layer, reshape)
        m, s = compute_cams(model, images, w[used], choice, method, scale, batch_size)
        part_maps = np.zeros((len(w), *m.shape[1:]), np.float32)
        part_scores = np.zeros((len(w), m.shape[1]), np.float32)
        part_maps[used], part_scores[used] = m, s
        maps = maps + share[:, None, None, None] * part_maps
        scores = scores + share[:, None] * part_scores
        layers[unit] = choice.describe()
    return {"maps": np.asarray(maps, np.float32), "scores": np.asarray(scores, np.float32),
            "layers": layers}
