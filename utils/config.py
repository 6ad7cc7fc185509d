"""Typed, frozen configs built from a notebook's `parameters` cell (UPPER_CASE names)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from utils.cv import list_splitters


def from_params(cls: type, params: dict):
    """Build config `cls` from the notebook's globals: field `x` is read from parameter `X`."""
    return cls(**{f.name: params[f.name.upper()] for f in fields(cls) if f.name.upper() in params})


def to_dict(config) -> dict:
    """A config as a plain dict, for config.json."""
    return dataclasses.asdict(config)


def _set(config, name: str, value) -> None:
    """Normalise a field of a frozen dataclass during __post_init__."""
    object.__setattr__(config, name, value)


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of notebooks/04_train.ipynb (see its parameters cell for what each means)."""

    data_dir: str | None = None
    run_dir: str = "runs/ridge"
    recipe: str = "ridge"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool | str = True
    img_size: int | None = None
    cv: str = "blocks"
    n_folds: int = 4
    seed: int = 0
    smoke: bool = False
    tta: bool = True
    pca_dim: int | None = None
    alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    batch_size: int | None = None
    overwrite: bool = False

    def __post_init__(self):
        from utils.recipes import list_recipes

        if self.recipe not in list_recipes():
            raise ValueError(f"RECIPE={self.recipe!r} is unknown; choose from {list_recipes()}")
        if self.cv.split(":", 1)[0] not in list_splitters():
            raise ValueError(f"CV={self.cv!r} is unknown; choose from {list_splitters()} "
                             "(groups as 'groups:<column or file>')")
        if self.pretrained in ("True", "False"):  # papermill -p passes text for some shells
            _set(self, "pretrained", self.pretrained == "True")
        _set(self, "alphas", tuple(float(a) for a in self.alphas))
        for name in ("n_folds", "batch_size", "img_size", "pca_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")


@dataclass(frozen=True)
class SubmitConfig:
    """Parameters of notebooks/06_ensemble_submit.ipynb."""

    data_dir: str | None = None
    runs: tuple[str, ...] = ("runs/ridge",)
    submission: str = "submissions/submission.csv"

    def __post_init__(self):
        runs = (self.runs,) if isinstance(self.runs, str) else tuple(self.runs)
        if not runs:
            raise ValueError("RUNS is empty: list at least one run folder written by 04_train")
        _set(self, "runs", runs)
