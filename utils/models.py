"""Models: timm backbones by name (pathology foundation models on the hub included, as
`HUB_MODELS`) with their own preprocessing and magnification, and gene-expression regressors
with one head per gene group.

`GeneRegressor` takes uint8 (or 0–255 float) NCHW patches, applies the backbone's own
preprocessing (`Preprocess`, from timm's data config), pools features with the backbone and maps
them with one head per gene group to standardised expression (spots × genes, in the model's gene
order). A head either predicts its genes directly or the top-K principal components of them,
decoded by a fixed matrix (`TARGET_PCA = K`). Per-gene mean and std are buffers, so a saved
state dict holds everything needed to predict. `ModelSpec` is the JSON recipe to rebuild a model
(`model.json` in a run folder; weights beside it). Its features are a backbone's pooled
embedding, with the pooled maps of chosen stages and the features of centre crops when the spec
names them (`embed`, `centre_crop`: the same functions the frozen features of `utils.features`
use, so a fine-tuned model reads what a ridge run read). The losses live in `utils.losses`,
devices and mixed precision in `utils.loop`.

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from utils.choices import MPP_FITS
from utils.files import write_with
from utils.places import resolve
from utils.runs import UnsafeFileError, read_model_info

# Pathology foundation models, usable as BACKBONE by name. Each entry names the authors' timm
# architecture and arguments (as in the model's hub config.json, HEST and TRIDENT), so it
# builds offline with PRETRAINED=False or a local weights file in timm layout; "hub" is where
# PRETRAINED=True downloads from (network, and for gated models an accepted licence and a
# `huggingface_hub.login()`). "mean"/"std"/"interpolation" are the authors' preprocessing,
# "pool" the embedding they prescribe ("cls": class token; "cls+mean": class token and mean of
# the patch tokens, register tokens excluded), "dim" its size and "mpp" the microns per pixel
# they trained at. Layer classes are named and resolved in `resolve_hub_model`.
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
H_OPTIMUS = {"mean": (0.707223, 0.578729, 0.703617), "std": (0.211883, 0.230117, 0.177517)}
SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
HUB_MODELS: dict[str, dict] = {
    "uni": {"hub": "hf-hub:MahmoodLab/uni", "arch": "vit_large_patch16_224",  # ViT-L/16, gated
            "kwargs": {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
            **IMAGENET, "interpolation": "bilinear", "pool": "cls", "dim": 1024, "mpp": 0.5},
    "uni2-h": {"hub": "hf-hub:MahmoodLab/UNI2-h", "arch": "vit_giant_patch14_224",  # gated
               "kwargs": {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                          "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                          "no_embed_class": True, **SWIGLU, "reg_tokens": 8,
                          "dynamic_img_size": True},
               **IMAGENET, "interpolation": "bilinear", "pool": "cls", "dim": 1536, "mpp": 0.5},
    "h-optimus-0": {"hub": "hf-hub:bioptimus/H-optimus-0",  # ViT-g/14 + 4 registers, 1.1 B
                    "arch": "vit_giant_patch14_reg4_dinov2",
                    "kwargs": {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
                    **H_OPTIMUS, "interpolation": "bicubic", "pool": "cls", "dim": 1536,
                    "mpp": 0.5},
    # the same weights, ungated, in timm layout (1aurent's port; its config.json matches)
    "h-optimus-0-mirror": {"hub": "hf-hub:1aurent/vit_giant_patch14_reg4_224.h-optimus-v0",
                           "arch": "vit_giant_patch14_reg4_dinov2",
                           "kwargs": {"img_size": 224, "init_values": 1e-5,
                                      "dynamic_img_size": False},
                           **H_OPTIMUS, "interpolation": "bicubic", "pool": "cls", "dim": 1536,
                           "mpp": 0.5},
    "h0-mini": {"hub": "hf-hub:bioptimus/H0-mini", "arch": "vit_base_patch14_reg4_dinov2",
                "kwargs": {"img_size": 224, **SWIGLU, "dynamic_img_size": True},  # gated
                **H_OPTIMUS, "interpolation": "bicubic", "pool": "cls+mean", "dim": 1536,
                "mpp": 0.5},
    "virchow2": {"hub": "hf-hub:paige-ai/Virchow2", "arch": "vit_huge_patch14_224",  # gated
                 "kwargs": {"img_size": 224, "init_values": 1e-5, "reg_tokens": 4,
                            "mlp_ratio": 5.3375, **SWIGLU, "dynamic_img_size": True},
                 **IMAGENET, "interpolation": "bicubic", "pool": "cls+mean", "dim": 2560,
                 "mpp": 0.5},
    "prov-gigapath": {"hub": "hf-hub:prov-gigapath/prov-gigapath",  # ViT-g/16 (sic), gated
                      "arch": "vit_giant_patch14_dinov2",
                      "kwargs": {"img_size": 224, "patch_size": 16, "embed_dim": 1536,
                                 "depth": 40, "num_heads": 24, "init_values": 1e-5,
                                 "mlp_ratio": 5.33334, "dynamic_img_size": True},
                      **IMAGENET, "interpolation": "bicubic", "pool": "cls", "dim": 1536,
                      "mpp": 0.5},
    "phikon": {"hub": "hf-hub:1aurent/vit_base_patch16_224.owkin_pancancer",  # timm port
               "arch": "vit_base_patch16_224", "kwargs": {"img_size": 224},
               **IMAGENET, "interpolation": "bilinear", "pool": "cls", "dim": 768, "mpp": 0.5},
    # owkin/phikon-v2 is a transformers Dinov2 checkpoint with no timm port on the hub: the
    # architecture builds here, weights must be a local file converted to timm layout.
    "phikon-v2": {"hub": None, "arch": "vit_large_patch16_224",
                  "kwargs": {"img_size": 224, "init_values": 1e-5},
                  **IMAGENET, "interpolation": "bilinear", "pool": "cls", "dim": 1024,
                  "mpp": 0.5},
}
# CONCH (MahmoodLab/CONCH) is an open_clip CoCa model, not a timm one: it is not in HUB_MODELS.
POOLINGS = ("cls", "cls+mean")


def resolve_hub_model(name: str) -> tuple[str, dict]:
    """A HUB_MODELS name → (timm architecture, create_model kwargs); other names pass through."""
    hub_model = HUB_MODELS.get(name.lower())
    if hub_model is None:
        return name, {}
    layers = {"SwiGLUPacked": timm.layers.SwiGLUPacked, "SiLU": nn.SiLU}
    return hub_model["arch"], {k: layers.get(v, v) if isinstance(v, str) else v
                               for k, v in hub_model["kwargs"].items()}


def hub_overlay(hub_model: dict) -> dict:
    """A hub model's preprocessing as a timm pretrained_cfg overlay (what data_config reads)."""
    size = hub_model["kwargs"].get("img_size", 224)
    return {"mean": tuple(hub_model["mean"]), "std": tuple(hub_model["std"]),
            "interpolation": hub_model["interpolation"], "input_size": (3, size, size),
            "crop_pct": 1.0}


def set_pooling(model: nn.Module, pool: str) -> nn.Module:
    """Make a timm ViT return the authors' embedding: "cls" is timm's token pooling; "cls+mean"
    concatenates the class token and the mean of the patch tokens (prefix tokens, i.e. class and
    register tokens, excluded), so `num_features` doubles. The state dict is unchanged."""
    if pool not in POOLINGS:
        raise ValueError(f"unknown pooling {pool!r}; choose from {POOLINGS}")
    if pool == "cls":
        model.global_pool = "token"
        return model
    n_prefix = model.num_prefix_tokens

    def cls_mean(tokens: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)

    model.pool = cls_mean  # VisionTransformer.forward_head pools through self.pool
    model.num_features = model.head_hidden_size = 2 * model.embed_dim
    return model


def create_backbone(name: str, pretrained: bool | str = True, img_size: int | None = None,
                    seed: int = 0, **kwargs) -> nn.Module:
    """A timm model without classifier (`num_classes=0`) that returns pooled features.

    `name` is a timm model name, "hf-hub:<repo>" or a `HUB_MODELS` name (which brings its
    architecture, preprocessing and pooling). `pretrained` is True (download: timm's weights, or
    the hub model's repo), False (random init, seeded) or the path of a local weights file
    (e.g. a Kaggle dataset), loaded by the kit (`load_backbone_weights`: never unpickled, and
    every backbone tensor must receive a weight). `img_size` is passed to models that take it
    (ViTs), so position embeddings match, made a multiple of their patch size (`fit_to_patch`).
    """
    torch.manual_seed(seed)
    hub_model = HUB_MODELS.get(name.lower())
    arch, hub_kwargs = resolve_hub_model(name)
    kwargs = {"num_classes": 0, **hub_kwargs, **kwargs}
    overlay = hub_overlay(hub_model) if hub_model else {}
    weights = None
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        weights = resolve(pretrained)
        if not weights.is_file():
            raise FileNotFoundError(f"PRETRAINED weights file not found: {weights}")
        pretrained = False
    kwargs["pretrained"] = bool(pretrained)
    if hub_model and pretrained:
        if hub_model["hub"] is None:
            raise ValueError(f"{name!r} has no timm weights on the hub: set PRETRAINED to a "
                             "local weights file in timm layout (or False)")
        arch = hub_model["hub"]
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    if "img_size" in kwargs:  # a hub model's own input size, unless IMG_SIZE says otherwise
        img_size = kwargs.pop("img_size") if img_size is None else img_size
        kwargs.pop("img_size", None)
    img_size = fit_to_patch(img_size, kwargs.get("patch_size") or name_patch_size(arch))
    try:
        model = _create(arch, img_size, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown timm backbone {name!r}; closest names: "
                             f"{closest_models(name)}") from err
        raise
    except OSError as err:  # the hub refused or could not be reached: say why and what to do
        raise HubAccessError(hub_error_message(arch, err)) from None
    if weights is not None:
        load_backbone_weights(model, weights)
    return set_pooling(model, hub_model["pool"]) if hub_model else model


def name_patch_size(arch: str) -> int | None:
    """The patch size a timm architecture name states (`vit_large_patch16_224` → 16)."""
    found = re.search(r"patch(\d+)", arch)
    return int(found.group(1)) if found else None


def fit_to_patch(img_size: int | None, patch: int | tuple | None) -> int | None:
    """`img_size` rounded down to a multiple of a ViT's patch size (at least one patch): a ViT
    accepts only those (SMOKE's 64 px becomes 56 for a patch-14 model); others pass through."""
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if img_size is None or not patch or img_size % patch == 0:
        return img_size
    return max(int(patch), img_size // patch * patch)


# --- weights files: read by the kit, never unpickled; every backbone tensor must get a weight ---

class WeightsError(ValueError):
    """A PRETRAINED weights file is unreadable or does not fit the backbone (names the file)."""


STRIPPED_PREFIXES = ("module.", "backbone.", "model.")  # wrappers of DDP, SSL and the kit's own
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "teacher")  # nests of checkpoints


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors: safetensors, or a torch file read with weights_only=True (a
    pickle that would run code is refused); nested state dicts are unwrapped."""
    import pickle

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(f"{path} is not a plain weights file: it holds Python objects that "
                              "could run code when loaded, so the kit refuses it "
                              f"({str(err).strip().splitlines()[-1][:200]}); use a safetensors "
                              "file, or one saved from a state dict of tensors") from None
    except Exception as err:  # safetensors and torch raise many types for broken files
        raise WeightsError(f"PRETRAINED={str(path)!r} cannot be read as weights (truncated, or "
                           f"not a safetensors/torch file: {type(err).__name__}: "
                           f"{str(err)[:200]}); download it again") from None
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in CONTAINER_KEYS):
        state = next(state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict))
    return {k: v for k, v in dict(state).items() if isinstance(v, torch.Tensor)}


def strip_prefixes(state: dict, names: set[str]) -> tuple[dict, str]:
    """`state` with the wrapper prefixes (`STRIPPED_PREFIXES`) most of its keys carry removed,
    as far as that matches more of the model's `names`; and what was stripped ("" for none)."""
    best, current, stripped = (state, ""), state, ""
    for _ in range(len(STRIPPED_PREFIXES)):
        prefix = max(STRIPPED_PREFIXES, key=lambda p: sum(k.startswith(p) for k in current))
        if 2 * sum(k.startswith(prefix) for k in current) < max(len(current), 1):
            break
        current, stripped = {k.removeprefix(prefix): v for k, v in current.items()}, \
            stripped + prefix
        if len(names & set(current)) > len(names & set(best[0])):
            best = (current, stripped)
    return best


def key_prefixes(keys: list[str], n: int = 8) -> list[str]:
    """The distinct two-level prefixes of state-dict keys (`blocks.0`), the first n."""
    return list(dict.fromkeys(".".join(k.split(".")[:2]) for k in keys))[:n]


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load a weights file into a timm backbone: wrapper prefixes stripped (saying so), the
    architecture's own checkpoint filter applied, and every tensor of the backbone filled with
    a weight of its shape, or a WeightsError naming the unmatched prefixes."""
    import sys

    own = model.state_dict()
    state, stripped = strip_prefixes(read_weights(path), set(own))
    if stripped:
        print(f"PRETRAINED {path.name}: stripped the prefix {stripped!r} from its keys")
    adapt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if adapt is not None:
        try:
            state = adapt(state, model)
        except Exception:  # noqa: BLE001 (a filter for another layout: keep the keys as they are)
            pass
    required = [k for k in own if not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} (backbone {tuple(own[k].shape)})"
             for k in required if k in state and state[k].shape != own[k].shape]
    if wrong:
        raise WeightsError(f"PRETRAINED={str(path)!r} does not fit {type(model).__name__}: "
                           f"{len(wrong)} tensors have another shape, e.g. {wrong[:3]}; is it "
                           "the weights of another architecture or size?")
    missing = [k for k in required if k not in state]
    if missing:
        extra = [k for k in state if k not in own]
        raise WeightsError(
            f"PRETRAINED={str(path)!r} loads {len(required) - len(missing)} of {len(required)} "
            f"backbone tensors: the backbone's unmatched keys start with "
            f"{key_prefixes(missing)}, the file's with {key_prefixes(extra)}. The kit does not "
            "train a backbone left partly random; use weights of this architecture in timm "
            f"layout (wrappers {list(STRIPPED_PREFIXES)} are stripped)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


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


def data_config(model: nn.Module, img_size: int | None = None, mpp: float | None = None,
                model_mpp: float | None = None, mpp_fit: str = "pad") -> dict:
    """The model's own preprocessing (mean, std, interpolation, input size), size overridable;
    with `model_mpp`, patches at `mpp` µm/px are first rescaled to the model's µm/px
    (`mpp_scale` = mpp / model_mpp; see `Preprocess`)."""
    config = timm.data.resolve_model_data_config(model)
    if img_size is not None:  # a ViT takes multiples of its patch size only (see fit_to_patch)
        img_size = fit_to_patch(img_size, getattr(getattr(model, "patch_embed", None),
                                                  "patch_size", None))
        config["input_size"] = (3, img_size, img_size)
    if model_mpp is not None:
        if not mpp or mpp <= 0 or model_mpp <= 0 or mpp_fit not in MPP_FITS:
            raise ValueError(f"MPP={mpp!r} and MODEL_MPP={model_mpp!r} must be > 0 and "
                             f"MPP_FIT={mpp_fit!r} one of {MPP_FITS}")
        config.update(mpp_scale=float(mpp) / float(model_mpp), mpp_fit=mpp_fit)
    return config


def fit_field(x: torch.Tensor, size: tuple[int, int], fit: str) -> torch.Tensor:
    """A rescaled patch brought to the model's input: "pad" reflects its border outwards,
    "tile" repeats it mirrored (both centre-crop a patch larger than the input), "resize"
    keeps it as it is (the model runs on the patch's own size)."""
    if fit == "resize":
        return x
    h, w = x.shape[-2:]
    if fit == "tile" and (h < size[0] or w < size[1]):
        reps = (-(-size[0] // h) | 1, -(-size[1] // w) | 1)  # odd: the patch stays centred
        mid = reps[0] // 2, reps[1] // 2  # the unflipped original sits in the middle
        row = torch.cat([x if (i - mid[1]) % 2 == 0 else x.flip(-1) for i in range(reps[1])],
                        dim=-1)
        x = torch.cat([row if (i - mid[0]) % 2 == 0 else row.flip(-2) for i in range(reps[0])],
                      dim=-2)
    elif h < size[0] or w < size[1]:
        dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
        need = [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]  # left, right, top, bottom
        while any(need):  # reflect pads at most (side - 1) at a time
            limit = (x.shape[-1] - 1,) * 2 + (x.shape[-2] - 1,) * 2
            step = [min(n, m) for n, m in zip(need, limit)]
            x = F.pad(x, step, mode="reflect")
            need = [n - s for n, s in zip(need, step)]
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class Preprocess(nn.Module):
    """uint8 NCHW patches → resized, normalised float batch, on the model's device.

    Without `mpp_scale` in the config a patch is resized to the input size. With it the patch
    is resampled to the model's magnification (224 px at 0.30 µm/px → 134 px at 0.5) and then
    fitted to the input as `mpp_fit` says (`fit_field`)."""

    def __init__(self, config: dict):
        super().__init__()
        self.size = tuple(config["input_size"][1:])
        self.mode = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
        self.scale, self.fit = config.get("mpp_scale"), config.get("mpp_fit", "pad")
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        size = self.size
        if self.scale is not None:
            size = tuple(max(1, round(s * self.scale)) for s in x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode=self.mode, antialias=True,
                              align_corners=False).clamp_(0, 255)
        x = (x - self.mean) / self.std  # normalised first: padding reflects tissue, not 0
        return x if self.scale is None else fit_field(x, self.size, self.fit)


def tta_views(x: torch.Tensor, tta: bool | str = True) -> Iterator[torch.Tensor]:
    """The views of a batch that TTA averages: with True the 8 dihedral ones (4 rotations ×
    optional flip), with "flips" the 4 of flipping each axis or both, with False just x."""
    if tta == "flips":
        yield from (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))
        return
    if not tta:
        yield x
        return
    for flipped in (x, x.flip(-1)):
        for k in range(4):
            yield torch.rot90(flipped, k, dims=(-2, -1))


# --- features of a backbone: stages and centre crops ----------------------------------------

def stage_indices(model: nn.Module, stages: Sequence[int] | str | None) -> list[int] | None:
    """FEATURE_STAGES as sorted, non-negative indices into timm's `feature_info` (None: the
    pooled embedding only); "all" is every stage, negative indices count from the last."""
    if stages is None:
        return None
    info = getattr(model, "feature_info", None)
    if not hasattr(model, "forward_intermediates") or not info:
        raise ValueError(f"FEATURE_STAGES={stages!r}: {type(model).__name__} has no timm "
                         "forward_intermediates; use FEATURE_STAGES=None with this backbone")
    n = len(info)
    if stages == "all":
        return list(range(n))
    chosen = [int(s) for s in ([stages] if isinstance(stages, (int, str)) else stages)]
    if not chosen or any(not -n <= s < n for s in chosen):
        raise ValueError(f"FEATURE_STAGES={stages!r}: this backbone has {n} stages, indices "
                         f"{-n}..{n - 1} (or 'all')")
    return sorted({s % n for s in chosen})


def stage_channels(model: nn.Module, stages: Sequence[int] | str | None) -> int:
    """The width of `embed`'s output: the chosen stages' channels plus the pooled embedding."""
    indices = stage_indices(model, stages) or []
    pooled = getattr(model, "head_hidden_size", None) or model.num_features  # e.g. MambaOut
    return sum(model.feature_info[i]["num_chs"] for i in indices) + pooled


def embed(model: nn.Module, x: torch.Tensor, indices: list[int] | None = None) -> torch.Tensor:
    """The pooled embedding of a preprocessed batch, after the global average of each chosen
    stage's feature map (timm's `forward_intermediates`: one forward pass, NCHW maps for CNNs
    and ViTs alike); `indices` None is the model's own output."""
    if indices is None:
        return model(x)
    try:
        final, maps = model.forward_intermediates(x, indices=indices, output_fmt="NCHW")
    except NotImplementedError as err:  # timm models that declare but do not implement it
        raise ValueError(f"FEATURE_STAGES: {type(model).__name__} does not support "
                         "forward_intermediates; use FEATURE_STAGES=None") from err
    pooled = [m.float().mean(dim=(-2, -1)) for m in maps]
    return torch.cat([*pooled, model.forward_head(final).float()], dim=1)


def centre_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The centre `fraction` of an NCHW batch's height and width (at least 1 px; 1.0: x)."""
    if fraction >= 1:
        return x
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


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
    mpp: float | None = None  # source µm/px of the patches (used with model_mpp)
    model_mpp: float | None = None  # µm/px the backbone expects; None: no rescaling
    mpp_fit: str = "pad"  # how a rescaled patch meets the input size (`fit_field`)
    stages: str | list[int] | None = None  # FEATURE_STAGES: pooled stage maps beside the embedding
    crops: list[float] = field(default_factory=lambda: [1.0])  # FEATURE_CROPS, concatenated

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
    """uint8 patches → standardised expression of the model's genes, one head per gene group.

    Its features are those of the frozen-feature recipes with the same FEATURE_STAGES and
    FEATURE_CROPS (`utils.features.extract_features` without TTA): per centre crop, the pooled
    maps of the chosen stages and the pooled embedding, concatenated. So a head set to the ridge
    fit on those features predicts what the ridge run predicts, and fine-tuning starts there."""

    def __init__(self, backbone: nn.Module, config: dict, spec: ModelSpec):
        super().__init__()
        self.spec, self.backbone, self.preprocess = spec, backbone, Preprocess(config)
        self.stage_indices = stage_indices(backbone, spec.stages)
        width = stage_channels(backbone, spec.stages) * len(spec.crops)
        self.heads = nn.ModuleList(GeneHead(width, len(cols), spec.dims.get(name))
                                   for name, cols in spec.heads.items())
        order = np.argsort(np.concatenate([np.asarray(c) for c in spec.heads.values()]))
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))
        self.register_buffer("y_mean", torch.zeros(len(spec.genes)))
        self.register_buffer("y_std", torch.ones(len(spec.genes)))
        self.frozen: list[nn.Module] = []
        self.freeze_bn = False  # keep every batch norm on its running statistics in training
        self.channels_last = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of raw patches: per crop, the stages' and the embedding's."""
        parts = []
        for fraction in self.spec.crops:
            view = self.preprocess(centre_crop(x, fraction))
            if self.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            parts.append(embed(self.backbone, view, self.stage_indices))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

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
    config = data_config(backbone, spec.img_size, spec.mpp, spec.model_mpp, spec.mpp_fit)
    return GeneRegressor(backbone, config, spec)


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




def freeze_blocks(model: GeneRegressor, n_blocks: int) -> list[str]:
    """Freeze the first `n_blocks` blocks of the backbone (FREEZE): its coarse parameter groups in
    timm's `group_matcher` order, the stem (for ViTs the patch and position embeddings) first,
    then one per stage of a CNN or per transformer block of a ViT.

    Frozen parameters get no gradient and their batch-norm statistics stay fixed. Returns the
    frozen parameter names.
    """
    if n_blocks <= 0:
        return []
    from timm.models import group_parameters

    backbone = model.backbone
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    names = [name for gid in sorted(groups)[:n_blocks] for name in groups[gid]]
    params, modules = dict(backbone.named_parameters()), dict(backbone.named_modules())
    for name in names:
        params[name].requires_grad_(False)
    model.frozen = [modules[name.rpartition(".")[0]] for name in names
                    if name.rpartition(".")[0] in modules]
    return names


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a model's state dict as safetensors, atomically (a bare timm backbone's file is
    what `create_backbone(name, pretrained=<file>)` loads)."""
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


