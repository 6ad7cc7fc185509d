"""The layer a Grad-CAM reads in a timm backbone, and how its output becomes (B, C, h, w) maps.

By default the last spatial stage of a CNN, or the last block's token grid of a ViT/XCiT (class
and register tokens dropped; the grid from the model's patch embedding). 06's LAYER names
another module of the backbone and RESHAPE how to read its output ("nchw", "nhwc", "tokens" or
"tokens:HxW"). Shapes are found by one probe forward pass on zeros.

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

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
    spatial = [n for n, s in shapes.items() if len(s) == 4 and sorted(s[1:])[1] > 1
               and not isinstance(children[n], nn.Identity)]  # maps of at least 2x2
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


