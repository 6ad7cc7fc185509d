"""03_augmentation_screening and 05's training augmentations (albumentations 2.x).

A policy is a list of transforms, `[{"name": ..., "params": {...}}, ...]`, stored as JSON
(`{"transforms": [...], ...}`): `notebooks/03_augmentation_screening` writes one as
`augment_policy.json`, and 05_train reads it through `AUGMENT` (a path, or the name of a
built-in policy of `utils.choices.AUGMENT_POLICIES`). A name is an albumentations class or a kit
transform (`HEDJitter`, the H&E stain jitter below). `utils.choices.AUGMENT_CANDIDATES` are what
03 screens.

`HEDJitter` rather than albumentations' `HEStain` (`benchmarks/results/augment.csv`, 64 her2st
patches, 03's weight-free scores): at zero strength `HEDJitter` is the identity, while
HEStain's Macenko method already shifts the stain by 0.52 (03's limit: 0.25; SSIM 0.958) and its
random presets by 0.40, both repainting the patch before any jitter; its Vahadane method keeps
the stain (0.021 at zero) but costs 0.7–1.3 s a patch, 8–14× HEDJitter's 0.08–0.14 s.

Screening scores each candidate by how much it changes a patch, original vs augmented, averaged
over a sample of train patches:
- `dino_sim`: cosine similarity of DINO ViT features (any timm name); 1 = unchanged.
- `lpips`: LPIPS perceptual distance (the `lpips` package); 0 = unchanged.
- `stain_shift`: 1-D Wasserstein distance between the haematoxylin and between the eosin density
  distributions of a patch, in units of their spread over the sample; 0 = same stain.
- `ssim`: structural similarity (skimage); 1 = unchanged.
DINO needs its weights from the Hugging Face hub and LPIPS its AlexNet/VGG trunk from
torchvision's download (its small linear layers ship inside the package). When they cannot be
fetched the score is left out and the screening uses the weight-free ones (stain_shift, ssim).
albumentations (and cv2) load only when a transform is built.
"""

from __future__ import annotations

import copy
import functools
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations: no version check

import numpy as np
import pandas as pd

from utils.bootstrap import ensure
from utils.choices import (
    AUGMENT_CANDIDATES,
    AUGMENT_POLICIES,
    GEOMETRIC,
    LPIPS_TRUNKS,
    check_candidate,
)
from utils.config import FeatureSpec, ScreenConfig, to_dict
from utils.data import load_images
from utils.features import extract_features
from utils.models import HubAccessError, create_backbone
from utils.paths import read_json, resolve, run_dir, write_csv, write_json


def list_policies() -> list[str]:
    """Built-in policy names accepted by AUGMENT (besides a policy file path)."""
    return sorted(AUGMENT_POLICIES)


def list_candidates() -> list[str]:
    """Candidate keys in registry order (geometric first, each transform weak → strong)."""
    return list(AUGMENT_CANDIDATES)


def candidate_spec(key: str) -> dict:
    """The policy item `{"name", "params"}` of a candidate key (params include the policy p)."""
    check_candidate(key)
    return copy.deepcopy(AUGMENT_CANDIDATES[key])


def is_geometric(key: str) -> bool:
    """True for candidates that only move pixels (flips, rotations, affine)."""
    return key.split(":", 1)[0] in GEOMETRIC


# --- policies --------------------------------------------------------------------------------

def read_policy(spec: str | os.PathLike) -> list[dict]:
    """The transform list of a built-in policy or a policy JSON file."""
    if str(spec) in AUGMENT_POLICIES:
        return AUGMENT_POLICIES[str(spec)]
    path = resolve(spec)
    if not path.is_file():
        raise ValueError(f"AUGMENT={str(spec)!r} is neither a built-in policy {list_policies()} "
                         f"nor an existing policy file ({path})")
    policy = read_json(path)
    if not isinstance(policy, dict) or not isinstance(policy.get("transforms"), list):
        raise ValueError(f"{path}: a policy needs a 'transforms' list of {{name, params}}")
    return policy["transforms"]


def build_augment(spec: str | os.PathLike | None):
    """An albumentations Compose for a built-in policy or a policy file; None when there is
    nothing to do."""
    import albumentations as A

    transforms = read_policy(spec or "none")
    if not transforms:
        return None
    return A.Compose([build_transform(item, f"AUGMENT={str(spec)!r}") for item in transforms])


def build_transform(item: dict, source: str = "policy"):
    """One transform from `{"name", "params"}`: a kit transform or an albumentations class.

    A misspelt or deprecated argument is an error naming it (albumentations only warns).
    """
    import inspect

    import albumentations as A

    name = item.get("name", "") if isinstance(item, dict) else ""
    cls = kit_transforms().get(name) or getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"{source}: unknown transform {item!r}; use an albumentations class "
                         f"name or one of the kit's {sorted(kit_transforms())}")
    params = _tuples(item.get("params", {}))
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if set(params) - allowed:
        raise ValueError(f"{source}: {name} takes no argument(s) {sorted(set(params) - allowed)};"
                         f" it takes {sorted(allowed)}")
    try:
        return cls(**params)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{source}: bad parameters for {name}: {err}") from err


def _tuples(params: dict) -> dict:
    """JSON lists back to the tuples albumentations expects for ranges."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def save_policy(path: str | os.PathLike, transforms: list[dict], **info) -> Path:
    """Write a policy file (transform list plus any screening info) atomically."""
    return write_json(resolve(path), {"transforms": transforms, **info})


def make_policy(kept: list[str]) -> list[dict]:
    """Policy items of kept candidate keys: the strongest kept level of each transform."""
    strongest: dict[str, str] = {}
    for key in kept:
        strongest[key.split(":", 1)[0]] = key  # keys come weak → strong in registry order
    order = [k.split(":", 1)[0] for k in list_candidates()]
    return [candidate_spec(strongest[n]) for n in sorted(strongest, key=order.index)]


# --- H&E stain jitter in HED space -----------------------------------------------------------

def rgb_to_hed(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) → float32 haematoxylin, eosin, DAB densities (skimage's rgb2hed
    stain matrix and scale, without its clipping at 0, so the conversion is invertible)."""
    from skimage.color import hed_from_rgb

    rgb = np.maximum(np.asarray(images, dtype=np.float32) / 255, 1e-6)
    return np.log(rgb) / np.float32(np.log(1e-6)) @ hed_from_rgb.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_hed: HED densities → uint8 RGB (skimage's hed2rgb, rounded)."""
    from skimage.color import rgb_from_hed

    log_rgb = hed @ (rgb_from_hed.astype(np.float32) * np.float32(np.log(1e-6)))
    return np.clip(np.rint(np.exp(log_rgb) * 255), 0, 255).astype(np.uint8)


def jitter_hed(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (alpha) and shift (beta) each HED stain density of a uint8 RGB image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"HEDJitter needs uint8 RGB (H, W, 3) images; got {image.dtype} "
                         f"{image.shape}")
    hed = rgb_to_hed(image)
    return hed_to_rgb(hed * np.float32(alpha) + np.float32(beta))


@functools.cache
def kit_transforms() -> dict[str, type]:
    """Transforms the kit defines, by policy name (built on first use: albumentations loads)."""
    import albumentations as A
    from pydantic import Field

    class HEDJitter(A.ImageOnlyTransform):
        """H&E stain jitter (Tellez et al. 2018): each HED density d becomes a·d + b with
        a ~ U(1 ± alpha_limit) and b ~ U(±beta_limit) per stain; zero limits are the identity."""

        class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
            alpha_limit: float = Field(ge=0, lt=1)
            beta_limit: float = Field(ge=0)

        def __init__(self, alpha_limit: float = 0.05, beta_limit: float = 0.005,
                     p: float = 0.5):
            super().__init__(p=p)
            self.alpha_limit, self.beta_limit = alpha_limit, beta_limit

        def get_params(self) -> dict:
            rng, a, b = self.random_generator, self.alpha_limit, self.beta_limit
            return {"alpha": rng.uniform(1 - a, 1 + a, 3), "beta": rng.uniform(-b, b, 3)}

        def apply(self, img: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                  **params) -> np.ndarray:
            return jitter_hed(img, alpha, beta)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("alpha_limit", "beta_limit")

    HEDJitter.__module__, HEDJitter.__qualname__ = __name__, "HEDJitter"  # picklable by name
    return {"HEDJitter": HEDJitter}


def __getattr__(name: str):
    """`utils.augment.HEDJitter` (and pickling of it) without importing albumentations early."""
    if name in ("HEDJitter",):
        return kit_transforms()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- screening ------------------------------------------------------------------------------

# score → "min" (keep candidates at or above the limit) or "max" (at or below)
SCORES = {"dino_sim": "min", "lpips": "max", "stain_shift": "max", "ssim": "min"}
# compared pixel by pixel: a flip looks like a new image to them, so they judge photometric
# candidates only (geometric ones by dino_sim and stain_shift)
PIXEL_ALIGNED = ("lpips", "ssim")


def sample_patches(data, n: int, seed: int = 0) -> np.ndarray:
    """n random train patches (uint8 (n, H, W, 3), in row order), or all if there are fewer."""
    images = load_images(data, "train")
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return np.asarray(images[rows])


def augment_images(what: str | list[dict], images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every patch through a candidate key (always applied: p=1) or through a policy's
    transform list (each with its own p), seeded."""
    import albumentations as A

    if isinstance(what, str):
        spec = candidate_spec(what)
        what = [{**spec, "params": {**spec["params"], "p": 1.0}}]
    compose = A.Compose([build_transform(item) for item in what], seed=seed)
    return np.stack([compose(image=image)["image"] for image in images])


# --- scores: each compares augmented patches with the originals, one value per patch ---------

def sorted_stains(images: np.ndarray) -> np.ndarray:
    """Each patch's haematoxylin and eosin densities, sorted: float32 (N, 2, H·W)."""
    hed = rgb_to_hed(images)[..., :2]
    return np.sort(hed.reshape(len(hed), -1, 2).transpose(0, 2, 1), axis=-1)


def stain_shift(original: np.ndarray, augmented: np.ndarray,
                scale: np.ndarray | None = None) -> np.ndarray:
    """Per patch: mean over H and E of the Wasserstein-1 distance between the densities of
    original and augmented pixels, divided by `scale` (per stain; default 1)."""
    a, b = sorted_stains(original), sorted_stains(augmented)
    if a.shape != b.shape:
        raise ValueError(f"augmented patches changed size: {original.shape} → {augmented.shape}")
    scale = np.ones(2, np.float32) if scale is None else np.asarray(scale, np.float32)
    return (np.abs(a - b).mean(-1) / scale).mean(-1)


def stain_spread(images: np.ndarray) -> np.ndarray:
    """Standard deviation of the H and E densities over all pixels of a sample: (2,)."""
    return rgb_to_hed(images)[..., :2].reshape(-1, 2).std(0)


def ssim_scores(original: np.ndarray, augmented: np.ndarray) -> np.ndarray:
    """Per patch SSIM (skimage, RGB, 7×7 window); 1 for identical patches."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(a, b, channel_axis=-1, data_range=255)
                     for a, b in zip(original, augmented)], dtype=np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def load_dino(name: str | None, pretrained: bool | str = True, img_size: int | None = None,
              seed: int = 0):
    """(timm model, note), or (None, why not) when the hub weights cannot be fetched."""
    if not name:
        return None, "off (DINO_MODEL is None)"
    try:
        model = create_backbone(name, pretrained, img_size, seed)
    except HubAccessError as err:  # offline, gated or not logged in: say so, screen without it
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        return None, (f"unavailable: the weights of {name} could not be fetched{offline}: "
                      f"{str(err).splitlines()[0][:200]}")
    return model, f"{name}, {_weights_note(pretrained)}"


def _weights_note(pretrained: bool | str) -> str:
    """How a network's weights were obtained, for the notes."""
    return {False: "random weights: mechanics only, not used for selection",
            True: "pretrained"}.get(pretrained, f"weights file {pretrained}")


def torchvision_checkpoint(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights of an LPIPS trunk once downloaded."""
    import torch
    from torchvision import models

    url = getattr(models, LPIPS_TRUNKS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(net: str | None, pretrained: bool = True):
    """(LPIPS model, note), or (None, why not) when its torchvision trunk cannot be fetched."""
    if not net:
        return None, "off (LPIPS_NET is None)"
    ensure("lpips", "03's LPIPS score")  # on first use: the bundle or PyPI
    import lpips

    checkpoint = torchvision_checkpoint(net)
    if pretrained and not checkpoint.is_file() and os.environ.get("HF_HUB_OFFLINE"):
        return None, (f"unavailable: HF_HUB_OFFLINE is set and torchvision's {net} weights are "
                      f"not in {checkpoint.parent}")
    try:
        with warnings.catch_warnings():  # torchvision: 'pretrained' is deprecated (lpips's call)
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False)
    except OSError as err:  # urllib's URLError: no network
        return None, f"unavailable: torchvision could not download the {net} trunk: {err}"
    return model, f"LPIPS {net}, {_weights_note(bool(pretrained))}"


def lpips_distance(model, original: np.ndarray, augmented: np.ndarray,
                   batch_size: int = 16) -> np.ndarray:
    """Per patch LPIPS distance; 0 for identical patches."""
    import torch

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1

    out = []
    with torch.inference_mode():
        for s in range(0, len(original), batch_size):
            a, b = original[s:s + batch_size], augmented[s:s + batch_size]
            out.append(model(tensor(a), tensor(b)).flatten())
    return torch.cat(out).numpy()


@dataclass
class Scorers:
    """Score functions of augmented patches (vs the originals), and what each one runs on."""

    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    selecting: list[str] = field(default_factory=list)  # scores that may reject a candidate


def make_scorers(images: np.ndarray, cfg: ScreenConfig) -> Scorers:
    """The four scores against `images`; networks whose weights cannot be loaded are left out."""
    scale = stain_spread(images)
    sc = Scorers(notes={"stain_shift": "weight-free", "ssim": "weight-free"})
    sc.fns["stain_shift"] = lambda aug: stain_shift(images, aug, scale)
    sc.fns["ssim"] = lambda aug: ssim_scores(images, aug)
    dino, sc.notes["dino_sim"] = load_dino(cfg.dino_model, cfg.dino_pretrained, cfg.img_size,
                                           cfg.seed)
    if dino is not None:
        spec = FeatureSpec(cfg.dino_model, cfg.dino_pretrained, cfg.img_size, tta=False)
        reference = extract_features(dino, images, spec, progress=False)
        sc.fns["dino_sim"] = lambda aug: cosine_similarity(
            reference, extract_features(dino, aug, spec, progress=False))
    model, sc.notes["lpips"] = load_lpips(cfg.lpips_net, cfg.lpips_pretrained)
    if model is not None:
        sc.fns["lpips"] = lambda aug: lpips_distance(model, images, aug)
    random = {"dino_sim": cfg.dino_pretrained is False, "lpips": not cfg.lpips_pretrained}
    sc.selecting = [s for s in SCORES if s in sc.fns and not random.get(s, False)]
    return sc


# --- screening, selection, outputs -----------------------------------------------------------

def score_augmented(what: str | list[dict], images: np.ndarray, scorers: Scorers,
                    seed: int = 0) -> dict[str, float]:
    """Mean of each available score over the patches augmented by `what`, and the seconds."""
    start = time.perf_counter()
    augmented = augment_images(what, images, seed)
    scores = {name: float(np.mean(fn(augmented))) for name, fn in scorers.fns.items()}
    return {**scores, "seconds": round(time.perf_counter() - start, 2)}


def screen_candidates(images: np.ndarray, keys: list[str], scorers: Scorers,
                      seed: int = 0) -> pd.DataFrame:
    """One row per candidate: mean of each available score over the patches, and seconds."""
    table = pd.DataFrame([{"candidate": key, "geometric": is_geometric(key),
                           **score_augmented(key, images, scorers, seed)} for key in keys])
    return table[["candidate", "geometric", *(s for s in SCORES if s in table), "seconds"]]


def select_candidates(table: pd.DataFrame, limits: dict[str, float | None],
                      selecting: list[str]) -> pd.DataFrame:
    """The table plus `kept` and `reason` (limits broken) by the `selecting` scores only."""
    reasons = pd.Series("", index=table.index)
    for score in selecting:
        limit = limits.get(score)
        if limit is None or score not in table:
            continue
        sign = "<" if SCORES[score] == "min" else ">"
        breaks = table[score] < limit if sign == "<" else table[score] > limit
        if score in PIXEL_ALIGNED:
            breaks &= ~table["geometric"]
        text = f"{score} " + table[score].map("{:.4g}".format) + f" {sign} {limit:g}; "
        reasons = reasons.where(~breaks, reasons + text)
    return table.assign(kept=reasons == "", reason=reasons.str.rstrip("; "))


def write_screening(cfg: ScreenConfig, table: pd.DataFrame, scorers: Scorers,
                    n_screened: int) -> Path:
    """config.json, screening.csv and augment_policy.json in RUN_DIR; returns the policy path."""
    folder = run_dir(cfg.run_dir)
    write_json(folder / "config.json", {**to_dict(cfg), "n_screened": n_screened})
    write_csv(folder / "screening.csv", table)
    kept, rejected = table[table["kept"]], table[~table["kept"]]
    return save_policy(
        folder / "augment_policy.json", make_policy(kept["candidate"].tolist()),
        kept=kept["candidate"].tolist(), rejected=dict(zip(rejected["candidate"],
                                                           rejected["reason"])),
        limits={s: cfg.limits[s] for s in scorers.selecting}, scores=scorers.notes,
        n_screened=n_screened, source="notebooks/03_augmentation_screening")


# --- figures ---------------------------------------------------------------------------------

def plot_scores(table: pd.DataFrame, limits: dict[str, float | None]):
    """One bar chart per score: kept (blue), rejected (red), not judged (grey); limits dashed."""
    import matplotlib.pyplot as plt

    scores = [s for s in SCORES if s in table]
    fig, axes = plt.subplots(1, len(scores), figsize=(2.6 * len(scores) + 2, 0.22 * len(table) + 1),
                             sharey=True, layout="constrained", squeeze=False)
    for ax, score in zip(axes[0], scores):
        colors = np.where(table["kept"], "tab:blue", "tab:red")
        if score in PIXEL_ALIGNED:
            colors = np.where(table["geometric"], "lightgray", colors)
        ax.barh(table["candidate"], table[score], color=colors)
        if limits.get(score) is not None:
            ax.axvline(limits[score], color="k", ls="--", lw=1)
        ax.set(title=score, xlabel=f"{'higher' if SCORES[score] == 'min' else 'lower'} = closer")
    axes[0, 0].invert_yaxis()
    return fig


def plot_examples(images: np.ndarray, table: pd.DataFrame, keys: list[str], n: int = 3,
                  seed: int = 0):
    """Rows of (original | augmented) pairs for `keys`, labelled kept or rejected."""
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    fig, axes = plt.subplots(max(len(keys), 1), 2 * n, layout="constrained", squeeze=False,
                             figsize=(2.4 * n + 1.6, 1.3 * len(keys) + 0.3))
    kept = dict(zip(table["candidate"], table["kept"]))
    for row, key in zip(axes, keys):
        augmented = augment_images(key, images[:n], seed)
        for i in range(n):
            row[2 * i].imshow(images[i])
            row[2 * i + 1].imshow(augmented[i])
        label = key.replace(":", "\n") + ("\nkept" if kept.get(key) else "\nrejected")
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for i, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[], title=("original", "augmented")[i % 2] if i < 2 * n else "")
    return fig
