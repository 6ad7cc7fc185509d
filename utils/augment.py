"""Training augmentations (albumentations 2.x): policies by name or file, and the H&E stain jitter.

A policy is a list of transforms, `[{"name": ..., "params": {...}}, ...]`, stored as JSON
(`{"transforms": [...], ...}`): `notebooks/03_augmentation_screening` writes one as
`augment_policy.json`, and 05_train reads it through `AUGMENT` (a path, or the name of a
built-in policy of `utils.choices.AUGMENT_POLICIES`). A name is an albumentations class or a kit
transform (`HEDJitter`, the H&E stain jitter below). `utils.choices.AUGMENT_CANDIDATES` are what
03 screens (`utils.screening`).

`HEDJitter` rather than albumentations' `HEStain` (`benchmarks/results/augment.csv`, 64 her2st
patches, 03's weight-free scores): at zero strength `HEDJitter` is the identity, while HEStain's
Macenko method already repaints the patch before any jitter; its Vahadane method keeps the stain
but costs about ten times as long per patch.
albumentations (and cv2) load only when a transform is built.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations: no version check

import numpy as np

from utils.choices import (
    AUGMENT_CANDIDATES,
    AUGMENT_POLICIES,
    GEOMETRIC,
    check_candidate,
)
from utils.files import read_json, write_json
from utils.places import resolve


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
