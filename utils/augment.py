"""Training augmentations by name or from a screened recipe file (albumentations 2.x).

A recipe is JSON: `{"transforms": [{"name": "HorizontalFlip", "params": {"p": 0.5}}, ...]}`;
`notebooks/03_augmentation_screening` writes one as `augment_recipe.json`, and 04_train reads
it through `AUGMENT` (a path, or a preset name below).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def list_presets() -> list[str]:
    """Preset names accepted by AUGMENT (besides a recipe file path)."""
    return sorted(PRESETS)


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
    built = []
    for item in transforms:
        cls = getattr(A, item.get("name", ""), None)
        if cls is None:
            raise ValueError(f"AUGMENT={str(spec)!r}: unknown albumentations transform "
                             f"{item.get('name')!r}")
        built.append(cls(**_tuples(item.get("params", {}))))
    return A.Compose(built)


def _tuples(params: dict) -> dict:
    """JSON lists back to the tuples albumentations expects for ranges."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def save_recipe(path: str | os.PathLike, transforms: list[dict], **info) -> Path:
    """Write a recipe file (transform list plus any screening info) atomically."""
    from utils.io import write_json

    return write_json(resolve(path), {"transforms": transforms, **info})
