"""Typed, frozen configs built from a notebook's `parameters` cell (UPPER_CASE names)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from utils.cv import list_splitters


def from_params(cls: type, params: dict):
    """Build config `cls` from the notebook's globals: field `x` is read from parameter `X`.

    "True"/"False" given as text (some shells and papermill calls) become booleans for fields
    that take a bool.
    """
    values = {f.name: params[f.name.upper()] for f in fields(cls) if f.name.upper() in params}
    for f in fields(cls):
        if "bool" in str(f.type) and values.get(f.name) in ("True", "False"):
            values[f.name] = values[f.name] == "True"
    return cls(**values)


def to_dict(config) -> dict:
    """A config as a plain dict, for config.json."""
    return dataclasses.asdict(config)


def set_field(config, name: str, value) -> None:
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
    # fine-tuning (RECIPE="finetune"); see utils.finetune
    epochs: int = 5
    lr: float = 2e-4
    head_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    accumulate: int = 1
    ema: float | None = None
    patience: int | None = 2
    loss_weights: tuple[float, float] = (0.3, 0.6)
    target: str = "genes"
    groups: str | None = None
    gene_groups: str = "runs/genes/gene_groups.csv"
    group_mode: str = "heads"
    augment: str = "flips"
    freeze: int = 0
    freeze_bn: bool = True
    head_init: str = "ridge"
    drop_path: float = 0.0
    num_workers: int | None = None
    resume: bool = True

    def __post_init__(self):
        from utils.recipes import list_recipes

        if self.recipe not in list_recipes():
            raise ValueError(f"RECIPE={self.recipe!r} is unknown; choose from {list_recipes()}")
        if self.cv.split(":", 1)[0] not in list_splitters():
            raise ValueError(f"CV={self.cv!r} is unknown; choose from {list_splitters()} "
                             "(groups as 'groups:<column or file>')")
        set_field(self, "alphas", tuple(float(a) for a in self.alphas))
        for name in ("n_folds", "batch_size", "img_size", "pca_dim", "epochs", "accumulate",
                     "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")
        _check_finetune(self)


GROUP_MODES = ("heads", "models")
HEAD_INITS = ("ridge", "random")


def _check_finetune(cfg: TrainConfig) -> None:
    """Validate (and normalise) the fine-tuning parameters; each error names the parameter."""
    set_field(cfg, "loss_weights", check_loss_weights(cfg.loss_weights))
    parse_target(cfg.target)
    checks = {
        "LR": cfg.lr > 0, "HEAD_LR": cfg.head_lr > 0, "WEIGHT_DECAY": cfg.weight_decay >= 0,
        "WARMUP_EPOCHS": cfg.warmup_epochs >= 0, "DROP_PATH": 0 <= cfg.drop_path < 1,
        "GRAD_CLIP": cfg.grad_clip is None or cfg.grad_clip > 0,
        "EMA": cfg.ema is None or 0 < cfg.ema < 1,
        "FREEZE": isinstance(cfg.freeze, int) and cfg.freeze >= 0,
        "NUM_WORKERS": cfg.num_workers is None or (isinstance(cfg.num_workers, int)
                                                   and cfg.num_workers >= 0),
        "GROUP_MODE": cfg.group_mode in GROUP_MODES, "HEAD_INIT": cfg.head_init in HEAD_INITS,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        values = {name: getattr(cfg, name.lower()) for name in bad}
        raise ValueError(f"invalid fine-tuning parameters {values}: LR, HEAD_LR > 0; "
                         "WEIGHT_DECAY, WARMUP_EPOCHS, FREEZE, NUM_WORKERS >= 0; 0 <= DROP_PATH "
                         "< 1; GRAD_CLIP None or > 0; EMA None or a decay in (0, 1); GROUP_MODE in "
                         f"{GROUP_MODES}; HEAD_INIT in {HEAD_INITS}")
    if cfg.group_mode == "models" and not cfg.groups:
        raise ValueError("GROUP_MODE='models' trains one model per gene group: set GROUPS to a "
                         "strategy of GENE_GROUPS (a gene_groups.csv from 02_gene_clustering)")
    if cfg.recipe == "finetune":
        from utils.augment import read_recipe

        read_recipe(cfg.augment)  # a preset name or an existing recipe file


def check_loss_weights(weights) -> tuple[float, float]:
    """LOSS_WEIGHTS (α, β) as floats: both ≥ 0 and α + β ≤ 1 (the rest weighs covariance)."""
    try:
        alpha, beta = (float(w) for w in weights)
    except (TypeError, ValueError) as err:
        raise ValueError(f"LOSS_WEIGHTS must be two numbers (α, β); got {weights!r}") from err
    if alpha < 0 or beta < 0 or alpha + beta > 1 + 1e-9:
        raise ValueError(f"LOSS_WEIGHTS=({alpha}, {beta}): need α ≥ 0, β ≥ 0 and α + β ≤ 1 "
                         "(α·MSE + β·(1 − Pearson) + (1 − α − β)·covariance MSE)")
    return alpha, beta


def parse_target(target: str) -> int | None:
    """TARGET → number of principal components (None: predict the genes directly)."""
    if target == "genes":
        return None
    name, _, k = str(target).partition(":")
    if name == "pca" and k.isdigit() and int(k) > 0:
        return int(k)
    raise ValueError(f"TARGET={target!r} is unknown; use 'genes' or 'pca:K' (K > 0 components)")


@dataclass(frozen=True)
class SubmitConfig:
    """Parameters of notebooks/06_ensemble_submit.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    runs: tuple[str, ...] = ("runs/ridge",)  # empty or None: every finished run under runs_root
    runs_root: str = "runs"
    submission: str = "submissions/submission.csv"
    blend: str = "global"
    gene_groups: str | None = "runs/genes/gene_groups.csv"
    groups: str | None = "kmeans"
    shrink: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    postprocess: tuple[str, ...] = ("shrink_to_mean", "clip")

    def __post_init__(self):
        from utils.ensemble import BLENDS
        from utils.postprocess import list_steps

        set_field(self, "runs", _as_tuple(self.runs))
        set_field(self, "postprocess", _as_tuple(self.postprocess))
        set_field(self, "shrink", tuple(float(s) for s in _as_tuple(self.shrink)))
        if self.blend not in BLENDS:
            raise ValueError(f"BLEND={self.blend!r} is unknown; choose from {list(BLENDS)}")
        if self.blend == "group" and not (self.gene_groups and self.groups):
            raise ValueError("BLEND='group' needs GENE_GROUPS (a gene_groups.csv written by "
                             "02_gene_clustering) and GROUPS (one of its strategies)")
        if not self.shrink or not all(0.0 <= s <= 1.0 for s in self.shrink):
            raise ValueError(f"SHRINK must list amounts between 0 and 1; got {self.shrink}")
        unknown = sorted(set(self.postprocess) - set(list_steps()))
        if unknown:
            raise ValueError(f"POSTPROCESS has unknown steps {unknown}; choose from "
                             f"{list_steps()} (or [] for none)")


def _as_tuple(value) -> tuple:
    """A parameter given as one item, a list or None, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int, float)) else tuple(value)


@dataclass(frozen=True)
class CamConfig:
    """Parameters of notebooks/05_gradcam.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/finetune"
    fold: int = 0
    patches: str = "val"
    n_patches: int = 32
    n_show: int = 6
    method: str = "GradCAM"
    targets: tuple[str, ...] = ("heg50", "hvg50", "groups")
    gene_groups: str | None = "runs/genes/gene_groups.csv"
    groups: str = "prefix"
    strategies: tuple[str, ...] = ()  # empty: every strategy of gene_groups
    genes_per_group: int = 5
    n_permutations: int = 1000
    scale: str = "standardised"
    layer: str | None = None
    reshape: str | None = None
    batch_size: int | None = None
    seed: int = 0
    smoke: bool = False

    def __post_init__(self):
        from utils.cam import SCALES, check_method

        set_field(self, "method", check_method(self.method))
        set_field(self, "targets", _as_tuple(self.targets))
        set_field(self, "strategies", _as_tuple(self.strategies))
        if self.patches not in ("val", "test") or self.scale not in SCALES:
            raise ValueError(f"PATCHES={self.patches!r} must be 'val' or 'test' and "
                             f"SCALE={self.scale!r} one of {SCALES}")
        for name in ("n_patches", "n_show", "genes_per_group", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")
        if self.smoke:  # a few patches and genes: seconds on a CPU
            for name, cap in (("n_patches", 4), ("n_show", 2), ("genes_per_group", 2),
                              ("n_permutations", 100)):
                set_field(self, name, min(getattr(self, name), cap))
