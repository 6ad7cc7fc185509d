"""Every notebook's parameters as a typed, frozen config, and the names each parameter accepts.

Each numbered notebook has one `parameters` cell of UPPER_CASE literals; the next cell turns it
into one of the configs below with `from_params` (field `x` is read from parameter `X`). The
defaults here are the notebooks' defaults (a test checks that they agree), and every error names
the parameter. This module imports nothing from the kit: the vocabularies below (recipes,
splitters, blends, CAM methods, augmentation presets and candidates, …) are the single list that
the stage modules register their implementations under.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

# --- vocabularies: what each name-valued parameter accepts ------------------------------------

RECIPES = ("finetune", "retrieval", "ridge")  # 05 RECIPE (utils.train: a function per name)
SPLITTERS = ("slices", "blocks", "groups", "random")  # 05 CV, the part before any ':'
GROUP_MODES = ("heads", "models")  # 05 GROUP_MODE
HEAD_INITS = ("ridge", "random")  # 05 HEAD_INIT
MPP_FITS = ("pad", "tile", "resize")  # 05 MPP_FIT (utils.models.fit_field)
FEATURE_DTYPES = ("float32", "float16")  # 05 FEATURE_DTYPE (utils.models.cached_features)
STAIN_NORMS = ("macenko",)  # 05 STAIN_NORM besides None (utils.models.normalise_stains)
# DACON patches: Visium spots are 100 µm apart centre to centre and ~329 px apart in the public
# spot coordinates of the same liver sections, so 100 / 329 ≈ 0.30 µm/px (issue 13: 0.26–0.30).
DACON_MPP = 0.3
SMOKE_PX = 64  # SMOKE = True: model input size cap (04, 05), a quick check, not a score
BLENDS = ("mean", "global", "group", "gene")  # 07 BLEND (utils.ensemble)
POSTPROCESS_STEPS = ("shrink_to_mean", "clip")  # 07 POSTPROCESS (utils.ensemble)
STRATEGIES = ("kmeans", "prefix", "correlation", "file", "functional")  # 02 gene groupings
UNMATCHED_RULES = ("other", "nearest")  # 02 functional: where genes in no gene set go
DEFAULT_GROUPS = "prefix"  # the gene-group strategy 06 and 07 use unless told otherwise
# 06 METHOD → pytorch-grad-cam class. Every one is computed from the target layer's activations
# and gradients, so one forward pass per batch serves every target (utils.cam).
CAM_METHODS = {"GradCAM": "GradCAM", "GradCAM++": "GradCAMPlusPlus", "XGradCAM": "XGradCAM",
               "LayerCAM": "LayerCAM", "HiResCAM": "HiResCAM", "EigenCAM": "EigenCAM",
               "EigenGradCAM": "EigenGradCAM", "GradCAMElementWise": "GradCAMElementWise"}
CAM_SCALES = ("standardised", "original")  # 06 SCALE
LPIPS_TRUNKS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights",  # 03 LPIPS_NET → torchvision
                "squeeze": "SqueezeNet1_1_Weights"}
# 02 `prefix` strategy: name families, first match wins; regular expressions on the gene name.
GENE_PREFIXES = {
    "MT": r"^MT-", "RPL/RPS": r"^RP[LS]\d+[A-Z]?$|^RPLP\d$", "LINC": r"^LINC\d",
    "ZNF": r"^ZNF\d", "SLC": r"^SLC\d", "AC": r"^AC\d{6}\.\d+$", "AL": r"^AL\d{6}\.\d+$",
    "AP": r"^AP\d{6}\.\d+$", "HLA": r"^HLA-", "KRT": r"^KRT\d", "COL": r"^COL\d+A\d",
    "IG": r"^IG[HKL](?:V|D|J|C|G\d|A\d|M$|E$|LL)", "CD": r"^CD\d+[A-Z]?$", "S100": r"^S100"}


# --- augmentation: 05's AUGMENT presets and the candidates 03 screens ------------------------
# A policy is a list of `{"name": albumentations class or kit transform, "params": {...}}`.
BORDER_REFLECT_101 = 4  # cv2.BORDER_REFLECT_101, without importing cv2
AUGMENT_PRESETS: dict[str, list[dict]] = {
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
# "p" is the probability in an exported policy; screening always applies a candidate (p=1).
# Geometric candidates only move pixels (Affine reflects at the border instead of padding black).
GEOMETRIC: dict[str, dict] = {
    "HorizontalFlip": {"p": 0.5},
    "VerticalFlip": {"p": 0.5},
    "RandomRotate90": {"p": 1.0},  # k ∈ {0, 1, 2, 3} quarter turns, k = 0 included
    "Affine": AUGMENT_PRESETS["seed"][1]["params"],
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
PHOTOMETRIC_P = 0.5  # policy probability of a kept photometric candidate


def _candidates() -> dict[str, dict]:
    """Every candidate key (`Name`, or `Name:level` when there are levels) → policy item."""
    table = {name: {"name": name, "params": dict(params)} for name, params in GEOMETRIC.items()}
    for name, levels in PHOTOMETRIC.items():
        for level, params in zip(LEVELS, levels):
            key = name if len(levels) == 1 else f"{name}:{level}"
            table[key] = {"name": name, "params": {**params, "p": PHOTOMETRIC_P}}
    return table


AUGMENT_CANDIDATES: dict[str, dict] = _candidates()


# --- self-supervised adaptation: 04's objectives and view building blocks ------------------
OBJECTIVES = ("simclr", "byol", "dino")  # 04 OBJECTIVE (utils.adapt: a class per name)
# 04 VIEWS joins these blocks with "+" (e.g. "flips+hed"); a part may also be a policy file
# (03's augment_policy.json). Photometric blocks are the strongest level of a 03 candidate,
# applied to 80% of the views (SimCLR's colour-jitter probability); "crop" takes 40–100% of the
# patch and resizes it back to IMG_SIZE.
VIEW_P = 0.8
VIEW_BLOCKS: dict[str, list[dict]] = {
    "flips": AUGMENT_PRESETS["flips"],
    "color": [{"name": "ColorJitter", "params": {**PHOTOMETRIC["ColorJitter"][-1], "p": VIEW_P}}],
    "hed": [{"name": "HEDJitter", "params": {**PHOTOMETRIC["HEDJitter"][-1], "p": VIEW_P}}],
    "blur": [{"name": "GaussianBlur", "params": {**PHOTOMETRIC["GaussianBlur"][-1], "p": 0.5}}],
    "crop": [{"name": "RandomResizedCrop", "params": {"scale": [0.4, 1.0], "p": 1.0}}],
}


# --- building configs -------------------------------------------------------------------------

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


def smoke_path(path: str | None) -> str | None:
    """Where a SMOKE quick check writes (and reads) what a real run keeps at `path`: `smoke/`
    after the `runs` or `submissions` folder in the path (runs/eda → runs/smoke/eda), else
    beside the last part (a/b → a/smoke/b). Preset names (no folder) are left alone."""
    if path is None or ("/" not in str(path) and str(path) not in ("runs", "submissions")):
        return path
    parts = Path(path).parts
    for root in ("runs", "submissions"):
        if root in parts:
            i = parts.index(root) + 1
            return str(path) if parts[i:i + 1] == ("smoke",) else str(Path(*parts[:i], "smoke",
                                                                          *parts[i:]))
    return str(Path(path).parent / "smoke" / Path(path).name)


def smoke_paths(config, names: tuple[str, ...]) -> None:
    """With SMOKE, move the named path fields of a config to their `smoke_path`: outputs, and
    inputs that must come from SMOKE runs (run folders: their rows are the SMOKE rows)."""
    if getattr(config, "smoke", False):
        for name in names:
            value = getattr(config, name)
            set_field(config, name, tuple(smoke_path(v) for v in value)
                      if isinstance(value, tuple) else smoke_path(value))


KIT_ROOT = Path(__file__).resolve().parent.parent  # relative paths are taken from here


def smoke_inputs(config, names: tuple[str, ...]) -> None:
    """With SMOKE, an input file that exists (gene groups, a policy: not tied to rows) is read
    as given; one that does not is looked for where the SMOKE run that writes it puts it."""
    if getattr(config, "smoke", False):
        for name in names:
            value = getattr(config, name)
            if value is not None and not (KIT_ROOT / Path(value).expanduser()).exists():
                set_field(config, name, smoke_path(value))


def as_tuple(value) -> tuple:
    """A parameter given as one item, a list or None, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int, float)) else tuple(value)


def parse_stages(stages) -> str | tuple[int, ...] | None:
    """FEATURE_STAGES as None, "all" or a tuple of stage indices ("-2,-1" given as text too),
    or a ValueError naming the parameter."""
    if stages is None or stages == "all":
        return stages
    try:
        items = stages.split(",") if isinstance(stages, str) else as_tuple(stages)
        if any(isinstance(s, (bool, float)) for s in items):
            raise ValueError
        values = tuple(int(s) for s in items)
    except (TypeError, ValueError):
        values = ()
    if not values:
        raise ValueError(f"FEATURE_STAGES={stages!r} must be None (the pooled embedding), "
                         "'all' or backbone stage indices such as '-2,-1' or [2, 3]")
    return values


def parse_crops(crops) -> tuple[float, ...]:
    """FEATURE_CROPS as a non-empty tuple of fractions in (0, 1] ("1,0.5" given as text too), or
    a ValueError naming the parameter."""
    try:
        values = tuple(float(c) for c in (crops.split(",") if isinstance(crops, str)
                                          else as_tuple(crops)))
    except (TypeError, ValueError):
        values = ()
    if not values or any(not 0 < c <= 1 for c in values):
        raise ValueError(f"FEATURE_CROPS={crops!r} must list fractions of the patch side in "
                         "(0, 1], e.g. [1.0, 0.5]: whole patch and centre half")
    return values


def check_stain_norm(stain_norm: str | None) -> str | None:
    """STAIN_NORM is None or a name of STAIN_NORMS, or a ValueError naming it."""
    if stain_norm is not None and stain_norm not in STAIN_NORMS:
        raise ValueError(f"STAIN_NORM={stain_norm!r}: choose None or one of {list(STAIN_NORMS)}")
    return stain_norm


def check_positive_ints(config, names: tuple[str, ...]) -> None:
    """Each named field is None or a positive integer, or a ValueError naming the parameter."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")


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


def check_augment(spec) -> None:
    """AUGMENT is a preset name or the path of a policy JSON file (read when training starts)."""
    if str(spec) in AUGMENT_PRESETS or str(spec).endswith(".json"):
        return
    raise ValueError(f"AUGMENT={str(spec)!r} is neither a preset {sorted(AUGMENT_PRESETS)} nor "
                     "a policy file (*.json, e.g. runs/augment/augment_policy.json from 03)")


def check_candidate(key: str) -> None:
    """An augmentation candidate key that 03 can screen, or an error listing them."""
    if key not in AUGMENT_CANDIDATES:
        raise ValueError(f"unknown augmentation candidate {key!r}; choose from "
                         f"{list(AUGMENT_CANDIDATES)}")


def check_method(name: str) -> str:
    """A CAM method's registry name (case-insensitive; pytorch-grad-cam class names work too)."""
    lookup = {k.lower(): k for k in CAM_METHODS} | {v.lower(): k for k, v in CAM_METHODS.items()}
    if str(name).lower() not in lookup:
        raise ValueError(f"unknown CAM method {name!r}; choose from {list(CAM_METHODS)}")
    return lookup[str(name).lower()]


# --- 01_eda -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EdaConfig:
    """Parameters of notebooks/01_eda.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/eda"
    near_zero: float = 0.01
    n_example_genes: int = 6
    n_heatmap_genes: int = 60
    window: int | None = None
    change_ratio: float = 6.0
    max_change_points: int = 10
    image_stride: int = 4
    n_patches: int = 8
    seed: int = 0
    smoke: bool = False

    def __post_init__(self):
        if self.smoke:  # the quickest settings: a small heatmap, coarse colour statistics
            set_field(self, "n_heatmap_genes", min(self.n_heatmap_genes, 30))
            set_field(self, "image_stride", max(self.image_stride, 8))
        smoke_paths(self, ("run_dir",))
        for name in ("n_example_genes", "n_heatmap_genes", "image_stride", "n_patches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")

    def window_for(self, n_rows: int) -> int:
        """Rows per rolling window: WINDOW, or 2% of the rows (at least 10)."""
        return self.window or max(10, n_rows // 50)


# --- 02_gene_clustering -----------------------------------------------------------------------

@dataclass(frozen=True)
class GeneClusteringConfig:
    """Parameters of notebooks/02_gene_clustering.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/genes"
    strategies: tuple[str, ...] = ("kmeans", "prefix", "correlation")
    k: int | None = None
    k_range: tuple[int, int] = (4, 30)
    n_pca: int = 50
    n_neighbors: int = 15
    neighbors: str = "exact"
    umap_epochs: int = 200
    n_modules: int = 20
    min_group_size: int = 10
    prefixes: dict[str, str] | None = None
    groups_file: str | None = None
    gene_sets: tuple[str, ...] | None = None
    gene_set_cache: str | None = None
    unmatched: str = "other"
    seed: int = 0
    smoke: bool = False

    def __post_init__(self):
        names = as_tuple(self.strategies)
        if self.groups_file and "file" not in names:
            names += ("file",)
        gene_sets = as_tuple(self.gene_sets)
        if gene_sets and "functional" not in names:
            names += ("functional",)
        unknown = [s for s in names if s not in STRATEGIES]
        if unknown or not names:
            raise ValueError(f"STRATEGIES {list(names)}: unknown {unknown}; choose from "
                             f"{list(STRATEGIES)}")
        if "file" in names and not self.groups_file:
            raise ValueError("strategy 'file' needs GROUPS_FILE, a CSV with columns gene, group")
        if "functional" in names and not gene_sets:
            raise ValueError("strategy 'functional' needs GENE_SETS: GMT files, folders of them "
                             "or Enrichr library names")
        if self.unmatched not in UNMATCHED_RULES:
            raise ValueError(f"UNMATCHED={self.unmatched!r}: choose from {list(UNMATCHED_RULES)}")
        k_range = tuple(int(k) for k in self.k_range)
        epochs = self.umap_epochs
        if self.smoke:  # the quickest settings: four values of K, a short UMAP
            k_range, epochs = (k_range[0], min(k_range[1], k_range[0] + 3)), min(epochs, 50)
        prefixes = dict(GENE_PREFIXES if self.prefixes is None else self.prefixes)
        smoke_paths(self, ("run_dir",))
        for name, value in (("strategies", names), ("k_range", k_range), ("umap_epochs", epochs),
                            ("prefixes", prefixes), ("gene_sets", gene_sets)):
            set_field(self, name, value)

    def embed_options(self) -> dict:
        """Keyword arguments of utils.genes.embed_genes."""
        return {"n_pca": self.n_pca, "n_neighbors": self.n_neighbors, "seed": self.seed,
                "n_epochs": self.umap_epochs, "neighbors": self.neighbors}

    def options(self, strategy: str) -> dict:
        """Keyword arguments of utils.genes.make_groups for one strategy."""
        return {"kmeans": {"k": self.k, "k_range": self.k_range, "seed": self.seed},
                "prefix": {"prefixes": self.prefixes, "min_size": self.min_group_size},
                "correlation": {"n_modules": self.n_modules, "min_size": self.min_group_size},
                "file": {"path": self.groups_file},
                "functional": {"sources": self.gene_sets, "min_size": self.min_group_size,
                               "unmatched": self.unmatched,
                               "cache_dir": self.gene_set_cache}}[strategy]


# --- 03_augmentation_screening ----------------------------------------------------------------

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
        keys = as_tuple(self.candidates) if self.candidates is not None else tuple(
            AUGMENT_CANDIDATES)
        for key in keys:
            check_candidate(key)
        set_field(self, "candidates", keys)
        smoke_paths(self, ("run_dir",))
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


# --- 04_adapt --------------------------------------------------------------------------------

def check_views(spec: str) -> tuple[str, ...]:
    """VIEWS as its parts: block names of VIEW_BLOCKS or policy files (*.json), joined by '+'."""
    parts = tuple(p.strip() for p in str(spec).split("+"))
    bad = [p for p in parts if p not in VIEW_BLOCKS and not p.endswith(".json")]
    if bad or not parts:
        raise ValueError(f"VIEWS={spec!r}: unknown part(s) {bad}; join blocks of "
                         f"{list(VIEW_BLOCKS)} or policy files (*.json, e.g. "
                         "runs/augment/augment_policy.json from 03) with '+'")
    return parts


@dataclass(frozen=True)
class AdaptConfig:
    """Parameters of notebooks/04_adapt.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/adapt_effnet_lite0"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool | str = True
    objective: str = "simclr"
    views: str = "flips+color+hed+blur+crop"
    splits: tuple[str, ...] = ("train", "test")
    img_size: int = 128
    epochs: int = 4
    batch_size: int = 32
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    temperature: float = 0.2
    momentum: float = 0.99
    n_probe: int = 256
    num_workers: int | None = None
    seed: int = 0
    smoke: bool = False
    resume: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"OBJECTIVE={self.objective!r} is unknown; choose from "
                             f"{list(OBJECTIVES)}")
        check_views(self.views)
        set_field(self, "splits", as_tuple(self.splits))
        if not self.splits or set(self.splits) - {"train", "test"}:
            raise ValueError(f"SPLITS={self.splits!r}: use 'train', 'test' or both (the test "
                             "images carry no labels, so using them is transductive but fair)")
        if self.smoke:  # a quick check: one epoch of a few steps at 64 px, a smoke folder
            for name, value in (("epochs", 1), ("steps_per_epoch", 2), ("img_size", SMOKE_PX),
                                ("n_probe", 16)):
                set_field(self, name, min(getattr(self, name) or value, value))
            smoke_paths(self, ("run_dir",))
        check_positive_ints(self, ("img_size", "epochs", "batch_size", "steps_per_epoch",
                                   "n_probe"))
        if self.batch_size < 2:
            raise ValueError(f"BATCH_SIZE={self.batch_size}: contrastive batches need >= 2")
        checks = {"LR": self.lr > 0, "HEAD_LR": self.head_lr > 0,
                  "WEIGHT_DECAY": self.weight_decay >= 0, "WARMUP_EPOCHS": self.warmup_epochs >= 0,
                  "TEMPERATURE": self.temperature > 0, "MOMENTUM": 0 <= self.momentum <= 1}
        bad = {name: getattr(self, name.lower()) for name, ok in checks.items() if not ok}
        if bad:
            raise ValueError(f"invalid parameters {bad}: LR, HEAD_LR, TEMPERATURE > 0; "
                             "WEIGHT_DECAY, WARMUP_EPOCHS >= 0; 0 <= MOMENTUM <= 1")


# --- 05_train ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Parameters of notebooks/05_train.ipynb (see its parameters cell for what each means)."""

    data_dir: str | None = None
    run_dir: str = "runs/ridge_effnet_lite0"
    recipe: str = "ridge"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool | str = True
    img_size: int | None = None
    cv: str = "slices"
    n_folds: int = 4
    seed: int = 0
    smoke: bool = False
    tta: bool = True
    pca_dim: int | None = None
    alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    neighbours: tuple[int, ...] = (5, 10, 20, 50)  # RECIPE="retrieval": k tried
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.1)  # RECIPE="retrieval": softmax temperatures
    batch_size: int | None = None
    overwrite: bool = False
    # fine-tuning (RECIPE="finetune"); see utils.train
    epochs: int = 5
    lr: float = 2e-4
    head_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    accumulate: int = 1
    ema: float | None = None
    layer_decay: float | None = None  # layer-wise LR decay of the backbone (timm), None: off
    mixup: float | None = None  # regression mixup: Beta(MIXUP, MIXUP) weights, None: off
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
    devices: int | None = None  # data-parallel processes (utils.train.device_count)
    resume: bool = True
    # magnification (both recipes): rescale patches from MPP to MODEL_MPP µm/px, then MPP_FIT
    mpp: float = DACON_MPP
    model_mpp: float | None = None
    mpp_fit: str = "pad"
    feature_dtype: str = "float32"
    # frozen features (ridge, retrieval): which stages, crops and stain normalisation
    feature_stages: str | tuple[int, ...] | None = None
    feature_crops: tuple[float, ...] = (1.0,)
    stain_norm: str | None = None

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"RECIPE={self.recipe!r} is unknown; choose from {list(RECIPES)}")
        if self.cv.split(":", 1)[0] not in SPLITTERS:
            raise ValueError(f"CV={self.cv!r} is unknown; choose from {list(SPLITTERS)} "
                             "(groups as 'groups:<column or file>')")
        set_field(self, "alphas", tuple(float(a) for a in self.alphas))
        set_field(self, "neighbours", tuple(int(k) for k in as_tuple(self.neighbours)))
        set_field(self, "temperatures", tuple(float(t) for t in as_tuple(self.temperatures)))
        if not self.neighbours or min(self.neighbours) < 1 or not self.temperatures or min(
                self.temperatures) <= 0:
            raise ValueError(f"NEIGHBOURS={self.neighbours} must list k >= 1 and TEMPERATURES="
                             f"{self.temperatures} temperatures > 0")
        if self.smoke:  # a quick check: 3 row blocks (nesting needs 3), one epoch at 64 px, no TTA
            for name, value in (("cv", "blocks"), ("n_folds", 3), ("epochs", 1),
                                ("img_size", min(self.img_size or SMOKE_PX, SMOKE_PX))):
                set_field(self, name, value)
            smoke_paths(self, ("run_dir",))
            smoke_inputs(self, ("gene_groups", "augment"))
        check_positive_ints(self, ("n_folds", "batch_size", "img_size", "pca_dim", "epochs",
                                   "accumulate", "patience", "devices"))
        self._check_mpp()
        self._check_features()
        self._check_finetune()

    def _check_mpp(self) -> None:
        """MPP and MODEL_MPP are positive µm/px (MODEL_MPP None: no rescaling), MPP_FIT and
        FEATURE_DTYPE known names."""
        if not (isinstance(self.mpp, (int, float)) and self.mpp > 0) or not (
                self.model_mpp is None or (isinstance(self.model_mpp, (int, float))
                                           and self.model_mpp > 0)):
            raise ValueError(f"MPP={self.mpp!r} must be > 0 (µm/px of the patches) and "
                             f"MODEL_MPP={self.model_mpp!r} None or > 0 (e.g. 0.5 for "
                             "pathology foundation models)")
        if self.mpp_fit not in MPP_FITS or self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"MPP_FIT={self.mpp_fit!r} must be one of {MPP_FITS} and "
                             f"FEATURE_DTYPE={self.feature_dtype!r} one of {FEATURE_DTYPES}")

    def _check_features(self) -> None:
        """FEATURE_STAGES None, "all" or stage indices ("-2,-1" as text too); FEATURE_CROPS
        fractions in (0, 1]; STAIN_NORM None or a name of STAIN_NORMS; all three are for the
        frozen-feature recipes (fine-tuning would not honour them)."""
        set_field(self, "feature_stages", parse_stages(self.feature_stages))
        set_field(self, "feature_crops", parse_crops(self.feature_crops))
        check_stain_norm(self.stain_norm)
        changed = [name for name, default in (("FEATURE_STAGES", None),
                                               ("FEATURE_CROPS", (1.0,)), ("STAIN_NORM", None))
                   if getattr(self, name.lower()) != default]
        if self.recipe == "finetune" and changed:
            raise ValueError(f"{', '.join(changed)} apply to the frozen-feature recipes (ridge, "
                             "retrieval); RECIPE='finetune' does not honour them: leave them at "
                             "their defaults")

    def _check_finetune(self) -> None:
        """Validate (and normalise) the fine-tuning parameters; each error names the parameter."""
        set_field(self, "loss_weights", check_loss_weights(self.loss_weights))
        parse_target(self.target)
        checks = {
            "LR": self.lr > 0, "HEAD_LR": self.head_lr > 0, "WEIGHT_DECAY": self.weight_decay >= 0,
            "WARMUP_EPOCHS": self.warmup_epochs >= 0, "DROP_PATH": 0 <= self.drop_path < 1,
            "GRAD_CLIP": self.grad_clip is None or self.grad_clip > 0,
            "EMA": self.ema is None or 0 < self.ema < 1,
            "LAYER_DECAY": self.layer_decay is None or 0 < self.layer_decay <= 1,
            "MIXUP": self.mixup is None or self.mixup > 0,
            "FREEZE": isinstance(self.freeze, int) and self.freeze >= 0,
            "NUM_WORKERS": self.num_workers is None or (isinstance(self.num_workers, int)
                                                        and self.num_workers >= 0),
            "GROUP_MODE": self.group_mode in GROUP_MODES,
            "HEAD_INIT": self.head_init in HEAD_INITS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name.lower()) for name in bad}
            raise ValueError(f"invalid fine-tuning parameters {values}: LR, HEAD_LR > 0; "
                             "WEIGHT_DECAY, WARMUP_EPOCHS, FREEZE, NUM_WORKERS >= 0; 0 <= "
                             "DROP_PATH < 1; GRAD_CLIP None or > 0; EMA None or a decay in (0, 1);"
                             " LAYER_DECAY None or in (0, 1]; MIXUP None or > 0; "
                             f"GROUP_MODE in {GROUP_MODES}; HEAD_INIT in {HEAD_INITS}")
        if self.group_mode == "models" and not self.groups:
            raise ValueError("GROUP_MODE='models' trains one model per gene group: set GROUPS "
                             "to a strategy of GENE_GROUPS (a gene_groups.csv from "
                             "02_gene_clustering)")
        if self.recipe == "finetune":
            check_augment(self.augment)


# --- 06_gradcam -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CamConfig:
    """Parameters of notebooks/06_gradcam.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/finetune_effnet_lite0"
    fold: int = 0
    patches: str = "val"
    n_patches: int = 32
    n_show: int = 6
    method: str = "GradCAM"
    targets: tuple[str, ...] = ("heg50", "hvg50", "groups")
    gene_groups: str | None = "runs/genes/gene_groups.csv"
    groups: str = DEFAULT_GROUPS
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
        set_field(self, "method", check_method(self.method))
        set_field(self, "targets", as_tuple(self.targets))
        set_field(self, "strategies", as_tuple(self.strategies))
        if self.patches not in ("val", "test") or self.scale not in CAM_SCALES:
            raise ValueError(f"PATCHES={self.patches!r} must be 'val' or 'test' and "
                             f"SCALE={self.scale!r} one of {CAM_SCALES}")
        check_positive_ints(self, ("n_patches", "n_show", "genes_per_group", "batch_size"))
        if self.smoke:  # a few patches and genes: seconds on a CPU
            for name, cap in (("n_patches", 4), ("n_show", 2), ("genes_per_group", 2),
                              ("n_permutations", 100)):
                set_field(self, name, min(getattr(self, name), cap))
        smoke_paths(self, ("run_dir",))  # a run folder: its rows are the SMOKE rows
        smoke_inputs(self, ("gene_groups",))


# --- 07_ensemble_submit -----------------------------------------------------------------------

@dataclass(frozen=True)
class SubmitConfig:
    """Parameters of notebooks/07_ensemble_submit.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    runs: tuple[str, ...] = ("runs/ridge_effnet_lite0",)  # empty or None: every finished run
    runs_root: str = "runs"
    submission: str = "submissions/submission.csv"
    blend: str = "global"
    gene_groups: str | None = "runs/genes/gene_groups.csv"
    groups: str | None = DEFAULT_GROUPS
    shrink: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    postprocess: tuple[str, ...] = ("shrink_to_mean", "clip")
    strict: bool = False  # True: refuse a submission with constant gene columns
    smoke: bool = False  # True: the quick check's runs (runs/smoke/) and submission folder

    def __post_init__(self):
        set_field(self, "runs", as_tuple(self.runs))
        smoke_paths(self, ("runs", "runs_root", "submission"))
        smoke_inputs(self, ("gene_groups",))
        set_field(self, "postprocess", as_tuple(self.postprocess))
        set_field(self, "shrink", tuple(float(s) for s in as_tuple(self.shrink)))
        if self.blend not in BLENDS:
            raise ValueError(f"BLEND={self.blend!r} is unknown; choose from {list(BLENDS)}")
        if self.blend == "group" and not (self.gene_groups and self.groups):
            raise ValueError("BLEND='group' needs GENE_GROUPS (a gene_groups.csv written by "
                             "02_gene_clustering) and GROUPS (one of its strategies)")
        if not self.shrink or not all(0.0 <= s <= 1.0 for s in self.shrink):
            raise ValueError(f"SHRINK must list amounts between 0 and 1; got {self.shrink}")
        unknown = sorted(set(self.postprocess) - set(POSTPROCESS_STEPS))
        if unknown:
            raise ValueError(f"POSTPROCESS has unknown steps {unknown}; choose from "
                             f"{list(POSTPROCESS_STEPS)} (or [] for none)")
