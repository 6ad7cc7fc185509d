"""Grad-CAM of a `GeneRegressor`: target layer and reshape chosen from the timm backbone, and
every target of a batch from one forward pass.

The layer: for token models (ViT, DeiT, EVA, XCiT, … : `patch_embed` + `blocks`) the last block's
input norm (`blocks.-1.norm1`: the patch tokens that the class token attends to; XCiT: the last
XCA block, whose patch tokens feed its class-attention blocks); for every other model (CNNs,
CoAtNet, MaxViT, MambaOut) the last spatial output before pooling (`stages.3`, `layer4`, `bn2`,
…), found by one probe forward. Its output is brought to (B, C, h, w): channels-last maps are
permuted; tokens are laid on the model's patch grid after dropping class/register tokens.

Per batch: one forward pass of the model (with the preprocessing it was trained with) records
the layer's output; then one backward pass per target from the target (a weighted sum of the
model's outputs) to that layer only; the pytorch-grad-cam method turns activations and
gradients into maps. This module imports torch, timm and pytorch-grad-cam on use; `import utils`
does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.cam import METHODS, SCALES, check_method, fold_units, read_model_info, split_targets

LAYOUTS = ("nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class LayerChoice:
    """The layer a CAM is computed at and how its output becomes (B, C, h, w) maps."""

    name: str  # module name in the backbone
    module: nn.Module
    layout: str  # "nchw", "nhwc" or "tokens"
    reshape: Callable[[torch.Tensor], torch.Tensor]
    grid: tuple[int, int]  # h, w of the maps

    def describe(self) -> str:
        """e.g. `stages.3 (nchw, 7x7)`."""
        return f"{self.name} ({self.layout}, {self.grid[0]}x{self.grid[1]})"


class TokenGrid:
    """(B, prefix + h·w, C) tokens → (B, C, h, w): class/register tokens dropped, patches laid
    out on the model's patch grid."""

    def __init__(self, grid: tuple[int, int], n_prefix: int):
        self.grid, self.n_prefix = grid, n_prefix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if x.ndim != 3 or x.shape[1] != self.n_prefix + h * w:
            raise ValueError(f"expected tokens (B, {self.n_prefix} + {h}x{w}, C); got "
                             f"{tuple(x.shape)}")
        return x[:, self.n_prefix:].reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def probe_shapes(backbone: nn.Module, input_size: tuple[int, int],
                 names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named modules for one blank input, in execution order."""
    modules, shapes = dict(backbone.named_modules()), {}

    def record(name):
        def hook(module, inputs, output):
            if torch.is_tensor(output):
                shapes[name] = tuple(output.shape)
        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        param = next(backbone.parameters())
        with torch.inference_mode():
            backbone.eval()(torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def default_layer(backbone: nn.Module, input_size: tuple[int, int]) -> str:
    """The name of the layer a CAM of this timm backbone is computed at (see module docstring)."""
    blocks = getattr(backbone, "blocks", None)
    if hasattr(backbone, "patch_embed") and isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        last = f"blocks.{len(blocks) - 1}"
        if hasattr(backbone, "cls_attn_blocks") or not hasattr(blocks[-1], "norm1"):
            return last
        return f"{last}.norm1"
    children = dict(backbone.named_children())
    shapes = probe_shapes(backbone, input_size, list(children))
    spatial = [n for n, s in shapes.items() if len(s) == 4 and not isinstance(children[n], nn.Identity)
               and sorted(s[1:])[1] > 1]  # at least two positions along two axes
    if not spatial:
        raise ValueError(f"no spatial output among the backbone's top-level modules "
                         f"{ {n: s for n, s in shapes.items()} }; set LAYER to a module name")
    name = spatial[-1]
    container = children[name]
    if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
        name = f"{name}.{len(container) - 1}"  # stages → stages.3: the same output, clearer
    return name


def infer_layout(shape: tuple[int, ...], channels: int | None = None) -> str:
    """"tokens" for (B, N, C); "nchw" or "nhwc" for 4-d outputs (by the channel count if it
    tells, else by which two axes are the square spatial ones)."""
    if len(shape) == 3:
        return "tokens"
    if len(shape) != 4:
        raise ValueError(f"cannot make CAM maps from an output of shape {shape}; choose another "
                         "LAYER")
    if channels is not None and (shape[1] == channels) != (shape[3] == channels):
        return "nchw" if shape[1] == channels else "nhwc"
    return "nhwc" if shape[1] == shape[2] and shape[2] != shape[3] else "nchw"


def token_grid(backbone: nn.Module, input_size: tuple[int, int], n_tokens: int,
               grid: tuple[int, int] | None = None) -> TokenGrid:
    """The patch grid of a token layer: given, or input size // the model's patch size; the
    leading tokens beyond it (class, registers: `num_prefix_tokens`) are dropped."""
    explicit = grid is not None
    if not explicit:
        patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
        if patch is None:
            raise ValueError("the backbone has no patch_embed.patch_size: set RESHAPE to "
                             "'tokens:HxW' with its patch grid")
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        grid = (input_size[0] // ph, input_size[1] // pw)
    n_prefix = n_tokens - grid[0] * grid[1]
    allowed = {0, int(getattr(backbone, "num_prefix_tokens", 0) or 0)}
    if n_prefix < 0 or (n_prefix not in allowed and not explicit):
        raise ValueError(f"{n_tokens} tokens do not fit the patch grid {grid[0]}x{grid[1]} plus "
                         f"{sorted(allowed)} prefix tokens; set RESHAPE='tokens:HxW'")
    return TokenGrid(tuple(grid), n_prefix)


def parse_reshape(reshape: str | None) -> tuple[str | None, tuple[int, int] | None]:
    """RESHAPE → (layout or None for automatic, explicit token grid or None)."""
    if reshape is None:
        return None, None
    layout, _, grid = str(reshape).lower().partition(":")
    layout = "nchw" if layout == "none" else layout
    if layout not in LAYOUTS or (grid and layout != "tokens"):
        raise ValueError(f"RESHAPE={reshape!r}: use None (automatic), 'nchw', 'nhwc', 'tokens' "
                         "or 'tokens:HxW'")
    if not grid:
        return layout, None
    try:
        h, w = (int(v) for v in grid.split("x"))
    except ValueError as err:
        raise ValueError(f"RESHAPE={reshape!r}: the grid must read like 'tokens:14x14'") from err
    return layout, (h, w)


def choose_layer(backbone: nn.Module, input_size: tuple[int, int], layer: str | None = None,
                 reshape: str | None = None) -> LayerChoice:
    """Target layer (`layer`: a module name, or automatic) and its reshape (`reshape`: see
    `parse_reshape`, or inferred from the layer's output) for a timm backbone."""
    modules = dict(backbone.named_modules())
    name = layer or default_layer(backbone, input_size)
    if name not in modules:
        top = [n for n in modules if n and n.count(".") <= 1]
        raise ValueError(f"LAYER={name!r} is not a module of the backbone; e.g. {top[-12:]}")
    shape = probe_shapes(backbone, input_size, [name]).get(name)
    if shape is None:
        raise ValueError(f"LAYER={name!r} returns no tensor (or is not used); choose another")
    layout, grid = parse_reshape(reshape)
    layout = layout or infer_layout(shape, getattr(backbone, "num_features", None))
    if layout == "tokens":
        fn = token_grid(backbone, input_size, shape[1], grid)
        return LayerChoice(name, modules[name], layout, fn, fn.grid)
    fn = _nhwc if layout == "nhwc" else _nchw
    return LayerChoice(name, modules[name], layout, fn, tuple(fn(torch.empty(shape)).shape[2:]))


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
