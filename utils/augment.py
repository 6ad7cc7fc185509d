"""Training augmentations by name or from a screened recipe file (albumentations 2.x).

A recipe is JSON: `{"transforms": [{"name": "HorizontalFlip", "params": {"p": 0.5}}, ...]}`;
`notebooks/03_augmentation_screening` writes one as `augment_recipe.json`, and 04_train reads
it through `AUGMENT` (a path, or a preset name below). A name is an albumentations class or a
kit transform (`HEDJitter`, the H&E stain jitter below). `CANDIDATES` are what 03 screens.
albumentations (and cv2) load only when a transform is built: this module is light to import.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.config import set_field
from utils.io import read_json
from utils.paths import resolve

BORDER_REFLECT_101 = 4  # cv2.BORDER_REFLECT_101, without importing cv2 here

PRESETS: dict[str, list[dict]] = {
    "none": [],
    # the eight dihedral views (flips × 90° rotations), each equally likely
    "flips": [{"name": "SquareSymmetry", "params": {"p": 1.0}}],
    # the seed team's final list: flips, mild shift-scale-rotate, mild brightness/contrast
    "seed": [
        {"name": "SquareSymmetry", "params": {"p": 1.0}},
        {"name": "Affine", "params": {"translate_percent": [-0.0625, 0.0625], "scale": [0.9, 1.1],
                                      "rotate": [-15, 15], "border_mode": BORDER_REFLECT_101,
                                      "p": 0.5}},
        {"name": "RandomBrightnessContrast", "params": {"brightness_limit": 0.1,
                                                        "contrast_limit": 0.1, "p": 0.5}},
    ],
}

# --- candidates screened by 03 ---------------------------------------------------------------
# "p" is the probability in an exported recipe; screening always applies a candidate (p=1).
# Geometric candidates only move pixels (Affine reflects at the border instead of padding black).
GEOMETRIC: dict[str, dict] = {
    "HorizontalFlip": {"p": 0.5},
    "VerticalFlip": {"p": 0.5},
    "RandomRotate90": {"p": 1.0},  # k ∈ {0, 1, 2, 3} quarter turns, k = 0 included
    "Affine": PRESETS["seed"][1]["params"],
}
LEVELS = ("weak", "medium", "strong")
# Photometric candidates: one parameter set per level in LEVELS (Equalize has no strength).
PHOTOMETRIC: dict[str, tuple[dict, ...]] = {
    "RandomBrightnessContrast": tuple({"brightness_limit": s, "contrast_limit": s}
                                      for s in (0.05, 0.1, 0.2)),
    "ColorJitter": tuple({"brightness": s, "contrast": s, "saturation": s, "hue": h}
                         for s, h in ((0.05, 0.01), (0.1, 0.02), (0.2, 0.05))),
    "HueSaturationValue": tuple({"hue_shift_limit": h, "sat_shift_limit": s, "val_shift_limit": s}
                                for h, s in ((2, 5), (5, 10), (10, 20))),
    "Equalize": ({},),
    "GaussianBlur": tuple({"sigma_limit": [0.1, s]} for s in (0.5, 1.0, 2.0)),
    "GaussNoise": tuple({"std_range": [s / 2, s]} for s in (0.02, 0.05, 0.1)),
    "CLAHE": tuple({"clip_limit": [1.0, c]} for c in (1.5, 2.0, 4.0)),
    "HEDJitter": tuple({"alpha_limit": a, "beta_limit": b}
                       for a, b in ((0.02, 0.002), (0.05, 0.005), (0.1, 0.01))),
}
PHOTOMETRIC_P = 0.5  # recipe probability of a kept photometric candidate


def list_presets() -> list[str]:
    """Preset names accepted by AUGMENT (besides a recipe file path)."""
    return sorted(PRESETS)


def _candidates() -> dict[str, dict]:
    """Every candidate key (`Name`, or `Name:level` when there are levels) → recipe item."""
    table = {name: {"name": name, "params": dict(params)} for name, params in GEOMETRIC.items()}
    for name, levels in PHOTOMETRIC.items():
        for level, params in zip(LEVELS, levels):
            key = name if len(levels) == 1 else f"{name}:{level}"
            table[key] = {"name": name, "params": {**params, "p": PHOTOMETRIC_P}}
    return table


CANDIDATES: dict[str, dict] = _candidates()


def list_candidates() -> list[str]:
    """Candidate keys in registry order (geometric first, each transform weak → strong)."""
    return list(CANDIDATES)


def candidate_spec(key: str) -> dict:
    """The recipe item `{"name", "params"}` of a candidate key (params include the recipe p)."""
    if key not in CANDIDATES:
        raise ValueError(f"unknown augmentation candidate {key!r}; choose from "
                         f"{list_candidates()}")
    return copy.deepcopy(CANDIDATES[key])


def is_geometric(key: str) -> bool:
    """True for candidates that only move pixels (flips, rotations, affine)."""
    return key.split(":", 1)[0] in GEOMETRIC


# --- recipes ---------------------------------------------------------------------------------

def read_recipe(spec: str | os.PathLike) -> list[dict]:
    """The transform list of a preset name or a recipe JSON file."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = resolve(spec)
    if not path.is_file():
        raise ValueError(f"AUGMENT={str(spec)!r} is neither a preset {list_presets()} nor an "
                         f"existing recipe file ({path})")
    recipe = read_json(path)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("transforms"), list):
        raise ValueError(f"{path}: a recipe needs a 'transforms' list of {{name, params}}")
    return recipe["transforms"]


def build_augment(spec: str | os.PathLike | None):
    """An albumentations Compose for a preset or recipe file; None when there is nothing to do."""
    import albumentations as A

    transforms = read_recipe(spec or "none")
    if not transforms:
        return None
    return A.Compose([build_transform(item, f"AUGMENT={str(spec)!r}") for item in transforms])


def build_transform(item: dict, source: str = "recipe"):
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


def save_recipe(path: str | os.PathLike, transforms: list[dict], **info) -> Path:
    """Write a recipe file (transform list plus any screening info) atomically."""
    from utils.io import write_json

    return write_json(resolve(path), {"transforms": transforms, **info})


def make_recipe(kept: list[str]) -> list[dict]:
    """Recipe items of kept candidate keys: the strongest kept level of each transform."""
    strongest: dict[str, str] = {}
    for key in kept:
        strongest[key.split(":", 1)[0]] = key  # keys come weak → strong in registry order
    order = [k.split(":", 1)[0] for k in list_candidates()]
    return [candidate_spec(strongest[n]) for n in sorted(strongest, key=order.index)]


# --- the screening notebook's config ---------------------------------------------------------

@dataclass(frozen=True)
class ScreenConfig:
    """Parameters of notebooks/03_augmentation_screening.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/augment"
    candidates: tuple[str, ...] | None = None
    n_patches: int = 64
    seed: int = 0
    smoke: bool = False
    dino_model: str | None = "vit_small_patch16_224.dino"
    dino_pretrained: bool | str = True
    img_size: int | None = None
    lpips_net: str | None = "alex"
    lpips_pretrained: bool = True
    min_dino_sim: float | None = 0.9
    max_lpips: float | None = 0.2
    max_stain_shift: float | None = 0.25
    min_ssim: float | None = 0.9

    def __post_init__(self):
        keys = self.candidates if self.candidates is not None else list_candidates()
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        for key in keys:
            candidate_spec(key)  # raises on an unknown key, listing the known ones
        set_field(self, "candidates", keys)
        from utils.augment_scores import LPIPS_TRUNKS

        if self.lpips_net not in (None, *LPIPS_TRUNKS):
            raise ValueError(f"LPIPS_NET={self.lpips_net!r}: choose from {list(LPIPS_TRUNKS)} "
                             "or None")
        if not isinstance(self.n_patches, int) or self.n_patches < 1:
            raise ValueError(f"N_PATCHES must be a positive integer; got {self.n_patches!r}")

    @property
    def n_screen(self) -> int:
        """Patches to screen: N_PATCHES, at most 8 in a smoke run."""
        return min(self.n_patches, 8) if self.smoke else self.n_patches

    @property
    def limits(self) -> dict[str, float | None]:
        """Selection limit per score (None: not a criterion)."""
        return {"dino_sim": self.min_dino_sim, "lpips": self.max_lpips,
                "stain_shift": self.max_stain_shift, "ssim": self.min_ssim}


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
    """Transforms the kit defines, by recipe name (built on first use: albumentations loads)."""
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
