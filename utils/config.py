"""Every notebook's parameters as a typed, frozen config, and the feature spec ridge and
retrieval share.

Each config is the one source of its notebook's defaults: every field carries its default and a
one-line doc (`documented`), and `CELL` names the fields the notebook's `parameters` cell shows,
grouped under headings; `python -m utils.dev.publish` renders that cell from them. The cell after
it builds the config with `from_params` (field `x` is read from parameter `X`), so any other field
is set by one more UPPER_CASE line in the cell, by papermill's `-p`, or by a preset
(`PRESET = "<name>"`, a file in presets/: see `apply_preset` for what wins). Every error names
the parameter; with `SMOKE`, `from_params` prints what the quick check changed. What each
name-valued parameter accepts is listed in `utils.choices`. This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import yaml

from utils.choices import (
    AUGMENT_CANDIDATES,
    BLENDS,
    CAM_SCALES,
    DACON_MPP,
    DEFAULT_GROUP_STRATEGY,
    DEFAULT_LOSS,
    FEATURE_DTYPES,
    GENE_PREFIXES,
    GROUP_MODES,
    HEAD_INITS,
    LPIPS_TRUNKS,
    MPP_FITS,
    OBJECTIVES,
    POSTPROCESS_STEPS,
    RECIPES,
    SMOKE_PX,
    SPLITTERS,
    STRATEGIES,
    TTA_TAGS,
    UNMATCHED_RULES,
    as_tuple,
    check_augment,
    check_candidate,
    check_compile,
    check_loss,
    check_method,
    check_stain_norm,
    check_tta,
    check_views,
    parse_crops,
    parse_stages,
)

# --- building configs -------------------------------------------------------------------------

def documented(default=MISSING, doc: str = "", *, factory=MISSING):
    """A config field with its default and the one-line doc its notebook's parameters cell shows
    (`factory` for a mutable default)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def field_defaults(cls: type) -> dict:
    """Each field's default, by field name."""
    return {f.name: f.default_factory() if f.default is MISSING else f.default
            for f in fields(cls)}


def as_literal(value) -> str:
    """A value as JSON text, so that a tuple and a list, or 1 and 1.0, compare equal."""
    return json.dumps(value, sort_keys=True, default=str)


def from_params(cls: type, params: dict):
    """Build config `cls` from the notebook's globals: field `x` is read from parameter `X`.

    Each value is parsed by its field's type from any spelling papermill, YAML or a shell gives
    (`parse_param`: "false", "no", "0" for a bool; "4" for an int; "[1, 10]" for a list), or
    refused naming the parameter and value. `PRESET` (when the config has it) puts a preset's
    values under the cell's (`apply_preset`). With `SMOKE`, one line says what the quick check
    changed.
    """
    types = {f.name.upper(): str(f.type) for f in fields(cls)}
    params = {k: parse_param(k, v, types[k]) if k in types else v for k, v in params.items()}
    if "PRESET" in types:
        params = apply_preset(cls, params)
    values = {f.name: parse_param(f.name.upper(), params[f.name.upper()], str(f.type))
              for f in fields(cls) if f.name.upper() in params}
    config = cls(**values)
    if getattr(config, "smoke", False):
        print(describe_smoke(config, cls(**{**values, "smoke": False})))
    return config


def describe_smoke(config, plain) -> str:
    """One line: what SMOKE changed, `config` against the same parameters without it."""
    before, after = to_dict(plain), to_dict(config)
    changed = [f"{name} {before[name]!r} → {value!r}" for name, value in after.items()
               if name != "smoke" and as_literal(value) != as_literal(before[name])]
    if getattr(config, "tta", False):
        changed.append(f"tta {config.tta!r} → False")
    return ("SMOKE changed: " + ", ".join(changed or ["nothing in the config"])
            + "; it also reads a subset of the rows (scores mean nothing)")


PRESETS = Path(__file__).resolve().parent.parent / "presets"


def read_preset(name: str) -> dict:
    """A preset's parameters: `presets/<name>.yaml`, or a YAML file's path."""
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = PRESETS / f"{name}.yaml"
    elif not path.is_absolute() and not path.exists():
        path = PRESETS.parent / path
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise ValueError(f"PRESET={name!r}: there is no {path}; choose from {known} or give a "
                         "YAML file's path")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict) or "PRESET" in values:
        raise ValueError(f"PRESET={name!r}: {path} must map parameter names to values, without "
                         "a PRESET of its own")
    return values


def apply_preset(cls: type, params: dict) -> dict:
    """The parameters with `PRESET`'s values under them. What wins, lowest first: the config's
    defaults, then the preset, then a cell or papermill value that differs from the default.
    Prints the preset's parameters the cell overrides."""
    name = params.get("PRESET")
    if not name:
        return params
    preset = read_preset(name)
    defaults = {key.upper(): value for key, value in field_defaults(cls).items()}
    unknown = sorted(set(preset) - set(defaults))
    if unknown:
        raise ValueError(f"PRESET={name!r} sets {unknown}, which are not parameters of "
                         f"{cls.__name__}: is it a preset of another notebook?")
    kept = {key: params[key] for key in preset if key in params
            and as_literal(params[key]) != as_literal(defaults[key])}
    overridden = [f"{key}={value!r} (preset: {preset[key]!r})" for key, value in kept.items()
                  if as_literal(value) != as_literal(preset[key])]
    print(f"PRESET {name}: {len(preset)} parameters"
          + (f"; the cell overrides {', '.join(overridden)}" if overridden else ""))
    return {**params, **preset, **kept}


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
NONE_WORDS = ("none", "null", "~")
# parameters with a range beyond their type: (check, what the parameter must be)
PARAM_RULES = {
    "ALPHAS": (lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of ridge strengths > 0"),
    "SEED": (lambda v: v >= 0, "an integer >= 0"),
    "N_FOLDS": (lambda v: v >= 2, "an integer >= 2 (a CV needs two folds)"),
}


def parse_param(name: str, value, annotation: str):
    """`value` of parameter `name` as its field's type (`annotation`, e.g. "int | None"): text
    parsed, numbers of the wrong kind and bools where none is allowed refused naming both."""
    kinds = [k.strip() for k in annotation.split("|")]
    if isinstance(value, str):
        value = _parse_text(name, value, kinds)
    items = [k for k in kinds if k.startswith("tuple[")]
    numbers = [k for k in items if "str" not in k]
    if numbers and value is not None and not isinstance(value, str):
        element = "int" if "int" in numbers[0] else "float"
        values = value if isinstance(value, (list, tuple)) else [value]
        value = tuple(_parse_scalar(name, _parse_text(name, v, [element])
                                    if isinstance(v, str) else v, [element]) for v in values)
    elif numbers and isinstance(value, str) and "str" not in kinds:
        raise ValueError(f"{name}={value!r}: expected a list of numbers, e.g. [1, 10]")
    elif not isinstance(value, (str, list, tuple, dict, type(None))):
        value = _parse_scalar(name, value, kinds)
    if name in PARAM_RULES and value is not None and not PARAM_RULES[name][0](value):
        raise ValueError(f"{name}={value!r}: expected {PARAM_RULES[name][1]}")
    return value


def _parse_text(name: str, text: str, kinds: list[str]):
    """A parameter given as text, as the first of its kinds the text spells; text it does not
    spell stays text where text is allowed, else a ValueError naming the parameter."""
    import ast

    word = text.strip().lower()
    if "None" in kinds and word in NONE_WORDS:
        return None
    if "bool" in kinds and word in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    for kind, parse in (("int", int), ("float", float)):
        if kind in kinds:
            try:
                return parse(text.strip())
            except ValueError:
                pass
    if any(k.startswith(("tuple[", "dict[")) for k in kinds) and word[:1] in "[({":
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"{name}={text!r}: not a list or mapping the kit can read; write "
                             "e.g. [1, 10] or {'mse': 1.0}") from None
    if any(k == "str" or k.startswith(("tuple[str", "dict[")) for k in kinds):
        return text
    raise ValueError(f"{name}={text!r}: expected {' or '.join(_WORDS.get(k, k) for k in kinds)}")


_WORDS = {"bool": "True or False (true/false, yes/no, 1/0)", "int": "an integer",
          "float": "a number", "None": "None", "tuple[float, ...]": "a list of numbers",
          "tuple[int, ...]": "a list of integers", "tuple[int, int]": "two integers"}


def _parse_scalar(name: str, value, kinds: list[str]):
    """A number or bool checked against its kinds: bools only where a bool is allowed, whole
    numbers for an int (5.0 → 5), 0/1 for a bool alone."""
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif isinstance(value, int):
        if "int" in kinds or "float" in kinds:
            return value
        if "bool" in kinds and value in (0, 1):
            return bool(value)
    elif isinstance(value, float):
        if "float" in kinds:
            return value
        if "int" in kinds and value.is_integer():
            return int(value)
    else:
        return value
    wanted = " or ".join(_WORDS.get(k, k) for k in kinds)
    raise ValueError(f"{name}={value!r}: expected {wanted}")


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



def is_positive(value) -> bool:
    """A number (not a bool) greater than 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_positive_ints(config, names: tuple[str, ...]) -> None:
    """Each named field is None or a positive integer, or a ValueError naming the parameter."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"{name.upper()} must be a positive integer; got {value!r}")



# --- frozen features: one spec names a feature set ---------------------------------------------

@dataclass(frozen=True)
class FeatureSpec:
    """A set of frozen backbone features: what computes them (backbone, weights, input size,
    TTA, magnification, stages, crops, stain normalisation) and how they are stored (dtype).
    `tag` names the set in cache file names and `cache_key` is what a cached file must match;
    at their defaults, stages, crops, stain, dtype and magnification add nothing to either, so
    caches written before these existed stay valid. Built once by `TrainConfig.feature_spec`."""

    backbone: str
    pretrained: bool | str = True  # True: hub weights; False: random, seeded; or a weights file
    img_size: int | None = None
    tta: bool | str = True  # views averaged: True the 8 dihedral ones, "flips" 4, False 1
    seed: int = 0  # seeds random weights (pretrained=False)
    mpp: float | None = None  # µm/px of the patches (used with model_mpp)
    model_mpp: float | None = None  # µm/px the backbone expects; None: no rescaling
    mpp_fit: str = "pad"
    stages: str | tuple[int, ...] | None = None  # FEATURE_STAGES
    crops: tuple[float, ...] = (1.0,)  # FEATURE_CROPS
    stain_norm: str | None = None  # STAIN_NORM
    dtype: str = "float32"  # FEATURE_DTYPE of the cache (returned as float32 either way)
    tiles: int = 1  # FEATURE_TILES: n > 1 adds n x n tiles' mean and max features

    def __post_init__(self):
        set_field(self, "stages", parse_stages(self.stages))
        set_field(self, "crops", parse_crops(self.crops))
        check_stain_norm(self.stain_norm)
        check_tta(self.tta)
        if not (self.mpp is None or is_positive(self.mpp)) or not (
                self.model_mpp is None or (is_positive(self.model_mpp) and self.mpp)):
            raise ValueError(f"MPP={self.mpp!r} must be > 0 (µm/px of the patches) and "
                             f"MODEL_MPP={self.model_mpp!r} None or > 0 (e.g. 0.5 for "
                             "pathology foundation models)")
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or self.tiles < 1:
            raise ValueError(f"FEATURE_TILES={self.tiles!r} must be an integer >= 1 (1: no "
                             "tiles; 2: a 2 x 2 grid of tiles of each patch)")
        if self.mpp_fit not in MPP_FITS or self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"MPP_FIT={self.mpp_fit!r} must be one of {MPP_FITS} and "
                             f"FEATURE_DTYPE={self.dtype!r} one of {FEATURE_DTYPES}")

    @property
    def weights(self) -> str:
        """The weights in a cache name: "hub", "random-seed<seed>" or "file-<file stem>"."""
        if isinstance(self.pretrained, bool):
            return "hub" if self.pretrained else f"random-seed{self.seed}"
        return "file-" + Path(self.pretrained).stem

    @property
    def design(self) -> str:
        """The part of the tag that says how patches were rescaled and which stages, crops and
        stain normalisation the features have ("" at the defaults)."""
        tag = "" if self.model_mpp is None else (
            f"_mpp{self.mpp:g}to{self.model_mpp:g}-{self.mpp_fit}")
        if self.stages is not None:
            tag += "_stages-" + ("all" if self.stages == "all" else ".".join(
                str(int(i)) for i in self.stages))
        if self.crops != (1.0,):
            tag += "_crops-" + "-".join(f"{c:g}" for c in self.crops)
        tag += f"_tiles{self.tiles}" if self.tiles > 1 else ""
        return tag + (f"_{self.stain_norm}" if self.stain_norm else "")

    @property
    def tag(self) -> str:
        """The feature set's name, e.g. `tf_efficientnet_lite0_hub_224px_d4`."""
        slug = self.backbone.replace("hf-hub:", "hf-").replace("/", "--").replace(":", "-")
        half = "" if self.dtype == "float32" else f"_{self.dtype}"
        return (f"{slug}_{self.weights}_{self.img_size or 'default'}px{self.design}_"
                f"{TTA_TAGS[self.tta]}{half}")

    def cache_name(self, split: str) -> str:
        """The cache file of one split's features."""
        return f"{self.tag}_{split}.npy"

    def cache_key(self, images: str, train_images: str | None = None) -> dict:
        """What a split's cached features must have been computed with: this spec and the
        fingerprint of the split's images (and of the train images, which a stain reference is
        fitted on)."""
        key = {"backbone": self.backbone, "pretrained": str(self.pretrained),
               "img_size": self.img_size, "tta": self.tta,
               "seed": None if self.pretrained is not False else self.seed, "images": images}
        if self.model_mpp is not None:
            key.update(mpp=self.mpp, model_mpp=self.model_mpp, mpp_fit=self.mpp_fit)
        if self.dtype != "float32":
            key["dtype"] = self.dtype
        if self.stages is not None:
            key["stages"] = self.stages if self.stages == "all" else list(self.stages)
        if self.crops != (1.0,):
            key["crops"] = list(self.crops)
        if self.stain_norm:
            key.update(stain_norm=self.stain_norm, stain_reference=train_images)
        if self.tiles > 1:
            key["tiles"] = self.tiles
        return key


# --- 01_eda -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EdaConfig:
    """Parameters of notebooks/01_eda.ipynb (see its parameters cell)."""

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "run_dir", "smoke", "seed", "window", "image_stride",
             "n_heatmap_genes")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    run_dir: str = documented("runs/eda", "output folder for figures and tables (relative to the "
                              "kit root)")
    near_zero: float = documented(0.01, "|expression| below this counts as zero in gene_stats.csv")
    n_example_genes: int = documented(6, "genes whose histograms are shown, from the lowest to "
                                      "the highest mean")
    n_heatmap_genes: int = documented(60, "most variable genes in the clustered correlation "
                                      "heatmap")
    window: int | None = documented(None, "rows per rolling window along row order; None: 2% of "
                                    "the train rows, at least 10")
    change_ratio: float = documented(6.0, "a change point jumps at least this many times the "
                                     "median jump")
    max_change_points: int = documented(10, "report at most this many change points")
    image_stride: int = documented(4, "colour statistics read every n-th pixel in each direction")
    n_patches: int = documented(8, "patches shown per split")
    seed: int = documented(0, "seed for pixel samples and the train-vs-test classifier's folds")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")

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

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "run_dir", "smoke", "seed", "strategies", "k", "k_range", "n_modules",
             "min_group_size", "groups_file", "gene_sets", "unmatched")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    run_dir: str = documented("runs/genes", "output folder; 05_train reads "
                              "RUN_DIR/gene_groups.csv as GENE_GROUPS")
    strategies: tuple[str, ...] = documented(("kmeans", "prefix", "correlation"), "of kmeans, "
                                             "prefix, correlation, file, functional")
    k: int | None = documented(None, "kmeans: number of clusters; None: the best silhouette in "
                               "K_RANGE")
    k_range: tuple[int, int] = documented((4, 30), "kmeans: smallest and largest K tried")
    n_pca: int = documented(50, "principal components of the standardised genes fed to UMAP")
    n_neighbors: int = documented(15, "UMAP: neighbours per gene")
    neighbors: str = documented("exact", "\"exact\": neighbours by correlation; \"approx\": UMAP's "
                                "NN-descent on the PCA")
    umap_epochs: int = documented(200, "UMAP: optimisation epochs")
    n_modules: int = documented(20, "correlation: modules cut from the co-expression tree")
    min_group_size: int = documented(10, "prefix, correlation, functional: smaller groups are "
                                     "merged/dissolved")
    prefixes: dict[str, str] | None = documented(None, "prefix: {group: regular expression}; "
                                                 "None: the kit's (utils.genes.PREFIXES)")
    groups_file: str | None = documented(None, "CSV with columns gene, group (e.g. pathway sets); "
                                         'adds the "file" strategy')
    gene_sets: tuple[str, ...] | None = documented(None, "GMT files, folders of them or Enrichr "
                                                   'library names; adds "functional"')
    gene_set_cache: str | None = documented(None, "fetched libraries; None: "
                                            "$KIT_CACHE_DIR/genesets or cache/genesets")
    unmatched: str = documented("other", 'functional: genes in no set go to "other" or "nearest" '
                                "group by mean r")
    seed: int = documented(0, "seed of PCA, UMAP and KMeans")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")

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

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "run_dir", "smoke", "seed", "candidates", "n_patches", "dino_model",
             "dino_pretrained", "lpips_net", "min_dino_sim", "max_lpips", "max_stain_shift",
             "min_ssim")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    run_dir: str = documented("runs/augment", "output folder (relative to the kit root)")
    candidates: tuple[str, ...] | None = documented(None, "candidate keys to screen "
                                                    "(utils.choices.AUGMENT_CANDIDATES); None: "
                                                    "all")
    n_patches: int = documented(64, "random train patches to screen on")
    seed: int = documented(0, "seed of the patch sample and of the random augmentations")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")
    dino_model: str | None = documented("vit_small_patch16_224.dino", "timm model for feature "
                                        "similarity; None: skip it")
    dino_pretrained: bool | str = documented(True, "True: hub weights; a local weights file; "
                                             "False: random (mechanics only)")
    img_size: int | None = documented(None, "DINO input size in px (patches are resized); None: "
                                      "the model's default")
    lpips_net: str | None = documented("alex", 'LPIPS trunk: "alex", "vgg" or "squeeze"; None: '
                                       "skip LPIPS")
    lpips_pretrained: bool = documented(True, "True: torchvision ImageNet trunk; False: random "
                                        "(mechanics only)")
    min_dino_sim: float | None = documented(0.9, "keep a candidate only if its DINO similarity is "
                                            "at least this (None: off)")
    max_lpips: float | None = documented(0.2, "... and its LPIPS distance at most this "
                                         "(photometric candidates; None: off)")
    max_stain_shift: float | None = documented(0.25, "... and its H/E stain shift at most this "
                                               "(None: off)")
    min_ssim: float | None = documented(0.9, "... and its SSIM at least this (photometric "
                                        "candidates; None: off)")

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



@dataclass(frozen=True)
class AdaptConfig:
    """Parameters of notebooks/04_adapt.ipynb (see its parameters cell)."""

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "run_dir", "smoke", "seed", "overwrite", "backbone", "pretrained",
             "objective", "views", "splits", "img_size", "epochs", "batch_size", "lr")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    run_dir: str = documented("runs/adapt_effnet_lite0", "output folder (relative to the kit root)")
    backbone: str = documented("tf_efficientnet_lite0", 'timm model name, "hf-hub:<repo>" or a '
                               "HUB_MODELS name (as 05)")
    pretrained: bool | str = documented(True, "starting weights: True hub, False random, or a "
                                        "local weights file (as 05)")
    objective: str = documented("simclr", "\"simclr\", \"byol\" or \"dino\" (lightly's heads and "
                                "losses)")
    views: str = documented("flips+color+hed+blur+crop", '"+"-joined transforms: flips color hed '
                            "blur crop, or a .json")
    splits: tuple[str, ...] = documented(("train", "test"), "unlabelled patches to adapt on "
                                         "(test: transductive, no labels)")
    img_size: int = documented(128, "views are resized to this many px")
    epochs: int = documented(4, "passes over the patches; fixed in advance (never chosen by the "
                             "probe's score)")
    batch_size: int = documented(32, "patches per step (two views each); SimCLR likes large "
                                 "batches on a GPU")
    steps_per_epoch: int | None = documented(None, "cap on the steps of an epoch; None: every "
                                             "full batch")
    lr: float = documented(1e-4, "peak learning rate of the backbone (AdamW; warmup, then cosine "
                           "decay to 0)")
    head_lr: float = documented(1e-3, "peak learning rate of the projection/prediction heads")
    weight_decay: float = documented(1e-4, "AdamW weight decay (biases and norm layers get none)")
    warmup_epochs: float = documented(0.5, "epochs of linear learning-rate warmup")
    temperature: float = documented(0.2, "SimCLR: NT-Xent temperature")
    momentum: float = documented(0.99, "BYOL, DINO: starting EMA momentum of the teacher (cosine "
                                 "to 1)")
    n_probe: int = documented(256, "patches on which view agreement is measured before and after")
    num_workers: int | None = documented(None, "DataLoader workers; None: 0 on CPU, up to 4 "
                                         "beside a GPU")
    devices: int | None = documented(None, "data-parallel GPUs: None every visible one (Kaggle: "
                                     "2 T4s), 1 one")
    seed: int = documented(0, "seed of the heads, the data order and the views (per epoch)")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")
    resume: bool = documented(True, "continue an unfinished run from its last finished epoch")
    overwrite: bool = documented(False, "True: adapt again even if RUN_DIR already holds a "
                                 "finished run")

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
                                   "n_probe", "devices"))
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

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "data and run": ("data_dir", "run_dir", "preset", "smoke", "overwrite"),
        "recipe": ("recipe", "backbone", "pretrained", "img_size", "cv", "tta", "target_pca"),
        "features": ("feature_stages", "feature_crops", "centre_features", "model_mpp"),
        "fine-tuning": ("epochs", "lr", "head_lr", "batch_size", "freeze", "augment", "loss",
                        "patience", "group_strategy")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    preset: str | None = documented(None, "a file of presets/ (its name) or a YAML path: its "
                                    "values, then the cell's changes")
    run_dir: str = documented("runs/ridge_effnet_lite0", "this run's output folder (relative to "
                              "the kit root)")
    recipe: str = documented("ridge", '"ridge" or "retrieval" on frozen features; "finetune": '
                             "train per fold")
    backbone: str = documented("tf_efficientnet_lite0", 'timm name, "hf-hub:<repo>" or a '
                               "HUB_MODELS name (docs/)")
    pretrained: bool | str = documented(True, "True: hub weights; False: random init; or the path "
                                        "of a local weights file")
    img_size: int | None = documented(None, "model input size in px (patches are resized on the "
                                      "fly); None: model default")
    cv: str = documented("slices", '"slices" (found along row order), "blocks", "random", or your '
                         'folds "file:<csv>"')
    n_folds: int = documented(4, 'folds of "blocks" and "random" ("slices": one per slice found)')
    seed: int = documented(0, "seed for random folds and random initialisation")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")
    tta: bool | str = documented(True, "views averaged by features and predictions: True 8 (D4), "
                                 '"flips" 4, False none')
    pca_dim: int | None = documented(None, "feature principal components kept by ridge and the "
                                     "finetune head init; None: all")
    alphas: tuple[float, ...] = documented((1.0, 10.0, 100.0, 1e3, 1e4, 1e5), "ridge strengths "
                                           "tried (also head init)")
    n_nearest: tuple[int, ...] = documented((5, 10, 20, 50), "retrieval: numbers of nearest "
                                            "training spots tried")
    temperatures: tuple[float, ...] = documented((0.02, 0.05, 0.1), "retrieval: softmax "
                                                 "temperatures of the similarity")
    batch_size: int | None = documented(None, "patches per batch; None: ridge 16 on CPU / 64 on "
                                        "GPU, finetune 16 / 32")
    overwrite: bool = documented(False, "True: retrain even if RUN_DIR already holds a finished "
                                 "run")
    # fine-tuning (RECIPE="finetune"); see utils.train
    epochs: int = documented(5, "maximum epochs per fold (early stopping may end a fold sooner)")
    lr: float = documented(2e-4, "peak learning rate of the backbone (AdamW; linear warmup, then "
                           "cosine decay to 0)")
    head_lr: float = documented(2e-4, "peak learning rate of the gene heads (ridge-initialised: "
                                "keep it low)")
    weight_decay: float = documented(0.01, "AdamW weight decay (biases and norm layers get none)")
    warmup_epochs: float = documented(1.0, "epochs of linear learning-rate warmup")
    grad_clip: float | None = documented(1.0, "clip the gradient norm to this value; None: no "
                                         "clipping")
    accumulate: int = documented(1, "gradient accumulation steps (effective batch: BATCH_SIZE × "
                                 "ACCUMULATE)")
    ema: float | None = documented(None, "decay of an exponential moving average of the weights "
                                   "(e.g. 0.99); None: off")
    layer_decay: float | None = documented(None, "layer-wise LR decay, e.g. 0.75: each backbone "
                                           "layer down learns 0.75× slower")
    mixup: float | None = documented(None, "regression mixup: patches and profiles blended, λ ~ "
                                     "Beta(MIXUP, MIXUP); e.g. 0.4")
    patience: int | None = documented(2, "epochs past a fold's best on its stopping rows (kept "
                                      "out of training); None: off")
    loss: dict[str, float] = documented(factory=lambda: dict(DEFAULT_LOSS), doc="loss terms and "
                                        "weights (utils.losses)")
    target_pca: int | None = documented(16, "K: fit the targets' top-K PCs, "
                                        "decoded to genes; None: every gene")
    group_strategy: str | None = documented(None, "None: one group; or a strategy of GENE_GROUPS "
                                            "(target-based: per fold)")
    gene_groups: str = documented("runs/genes/gene_groups.csv", "gene_groups.csv written by "
                                  "02_gene_clustering")
    group_mode: str = documented("heads", '"heads": one backbone, one head per group; "models": '
                                 "one model per group")
    augment: str = documented("flips", '"none", "flips", "seed", or a policy JSON from '
                              "03_augmentation_screening")
    freeze: int = documented(0, "backbone blocks frozen: the stem, then each stage (CNN) or "
                             "transformer block (ViT)")
    freeze_bn: bool = documented(True, "batch norms keep their running statistics (small batches "
                                 "would corrupt them)")
    head_init: str = documented("ridge", '"ridge": heads start from a ridge fit on frozen '
                                'features; "random"')
    drop_path: float = documented(0.0, "stochastic-depth rate, for backbones that support it")
    num_workers: int | None = documented(None, "DataLoader worker processes; None: 0 on CPU, up "
                                         "to 4 beside a GPU")
    devices: int | None = documented(None, "data-parallel GPUs (finetune): None every visible "
                                     "one (Kaggle: 2 T4s), 1 one")
    resume: bool = documented(True, "continue an interrupted run from its last finished epoch "
                              "(RUN_DIR/checkpoints)")
    # magnification (both recipes): rescale patches from MPP to MODEL_MPP µm/px, then MPP_FIT
    mpp: float = documented(DACON_MPP, "µm/px of the patches; DACON ≈ 0.30 (100 µm Visium spot "
                            "pitch / ~329 px), her2st 0.63")
    model_mpp: float | None = documented(None, "µm/px the backbone expects (0.5 for the "
                                         "HUB_MODELS); None: no rescaling")
    mpp_fit: str = documented("pad", 'rescaled patch → input: "pad" (reflect; crop if larger), '
                              '"tile", "resize"')
    feature_dtype: str = documented("float32", 'ridge feature cache: "float32" or "float16" (half '
                                    "the disk, as HEST)")
    # frozen features (ridge, retrieval): which stages, crops and stain normalisation
    feature_stages: str | tuple[int, ...] | None = documented(
        "all", 'features (finetune\'s too): "all" stages, None the embedding, or "-2,-1"')
    feature_crops: tuple[float, ...] = documented(
        (1.0, 0.5), "the patch and its centre crops (fractions of its side), joined")
    stain_norm: str | None = documented(None, 'ridge features: None, or "macenko" (stain '
                                        "reference from train patches)")
    centre_features: bool = documented(False, "ridge/retrieval: each slice's features minus its "
                                       "mean (folds; test)")
    feature_tiles: int = documented(1, "n > 1: n x n tiles of each patch, mean- and max-pooled, "
                                    "beside it")
    alpha_per_component: bool = documented(False, "ridge with TARGET_PCA: one nested alpha per "
                                           "target PC")
    compile: bool | str = documented("auto", 'torch.compile for frozen features: "auto" (CPU, '
                                     "long runs), True, False")

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"RECIPE={self.recipe!r} is unknown; choose from {list(RECIPES)}")
        if self.cv.split(":", 1)[0] not in SPLITTERS:
            raise ValueError(f"CV={self.cv!r} is unknown; choose from {list(SPLITTERS)} "
                             "(your own folds as 'file:<csv>[:<column>]')")
        check_tta(self.tta)
        check_compile(self.compile)
        set_field(self, "alphas", tuple(float(a) for a in self.alphas))
        set_field(self, "n_nearest", tuple(int(k) for k in as_tuple(self.n_nearest)))
        set_field(self, "temperatures", tuple(float(t) for t in as_tuple(self.temperatures)))
        if not self.n_nearest or min(self.n_nearest) < 1 or not self.temperatures or min(
                self.temperatures) <= 0:
            raise ValueError(f"N_NEAREST={self.n_nearest} must list k >= 1 and TEMPERATURES="
                             f"{self.temperatures} temperatures > 0")
        if self.smoke:  # a quick check: 3 row blocks (nesting needs 3), one epoch at 64 px, no TTA
            for name, value in (("cv", "blocks"), ("n_folds", 3), ("epochs", 1),
                                ("img_size", min(self.img_size or SMOKE_PX, SMOKE_PX))):
                set_field(self, name, value)
            smoke_paths(self, ("run_dir",))
            smoke_inputs(self, ("gene_groups", "augment"))
        check_positive_ints(self, ("n_folds", "batch_size", "img_size", "pca_dim", "epochs",
                                   "accumulate", "patience", "devices", "target_pca"))
        self._check_features()
        self._check_finetune()

    @property
    def applied_tta(self) -> bool | str:
        """The TTA that features and predictions apply: `TTA`, none with SMOKE."""
        return False if self.smoke else self.tta

    @cached_property
    def feature_spec(self) -> FeatureSpec:
        """The frozen features ridge and retrieval use (with `applied_tta`)."""
        return FeatureSpec(self.backbone, self.pretrained, self.img_size, self.applied_tta,
                           self.seed, self.mpp, self.model_mpp, self.mpp_fit,
                           self.feature_stages, self.feature_crops, self.stain_norm,
                           self.feature_dtype, self.feature_tiles)

    def _check_features(self) -> None:
        """The feature spec is valid (`FeatureSpec`: MPP, MODEL_MPP, MPP_FIT, FEATURE_DTYPE,
        FEATURE_STAGES, FEATURE_CROPS, FEATURE_TILES, STAIN_NORM), ALPHA_PER_COMPONENT has
        ridge's TARGET_PCA, and fine-tuning leaves STAIN_NORM, CENTRE_FEATURES and
        FEATURE_TILES alone (its model reads FEATURE_STAGES and FEATURE_CROPS; it would not
        honour those three)."""
        set_field(self, "feature_stages", parse_stages(self.feature_stages))
        set_field(self, "feature_crops", parse_crops(self.feature_crops))
        self.feature_spec  # noqa: B018 (built now: an invalid spec fails here, naming it)
        if self.alpha_per_component and (self.recipe != "ridge" or not self.target_pca):
            raise ValueError("ALPHA_PER_COMPONENT=True chooses one ridge alpha per target PC: "
                             "it needs RECIPE='ridge' and TARGET_PCA (e.g. 16)")
        changed = [name for name, default in (("STAIN_NORM", None), ("CENTRE_FEATURES", False),
                                              ("FEATURE_TILES", 1))
                   if getattr(self, name.lower()) != default]
        if self.recipe == "finetune" and changed:
            raise ValueError(f"{', '.join(changed)} apply to the frozen-feature recipes (ridge, "
                             "retrieval); RECIPE='finetune' does not honour them: leave them at "
                             "their defaults")

    def _check_finetune(self) -> None:
        """Validate (and normalise) the fine-tuning parameters; each error names the parameter."""
        set_field(self, "loss", check_loss(self.loss))
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
        if self.group_mode == "models" and not self.group_strategy:
            raise ValueError("GROUP_MODE='models' trains one model per gene group: set "
                             "GROUP_STRATEGY to a strategy of GENE_GROUPS (a gene_groups.csv "
                             "from 02_gene_clustering)")
        if self.recipe == "finetune":
            check_augment(self.augment)


# --- 06_gradcam -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CamConfig:
    """Parameters of notebooks/06_gradcam.ipynb (see its parameters cell)."""

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "run_dir", "smoke", "seed", "fold", "patches", "n_patches", "method",
             "targets", "gene_groups", "group_strategy", "strategies")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    run_dir: str = documented("runs/finetune_effnet_lite0", "a fine-tuning run of 05_train; "
                              "outputs: RUN_DIR/gradcam")
    fold: int = documented(0, "whose model(s) to explain (fold0 or fold0-<group> in model.json)")
    patches: str = documented("val", "\"val\": FOLD's held-out train rows; \"test\": test patches")
    n_patches: int = documented(32, "patches explained (drawn at random with SEED)")
    n_show: int = documented(6, "patches shown in the grid figure")
    method: str = documented("GradCAM", "GradCAM, GradCAM++, XGradCAM, LayerCAM, HiResCAM, "
                             "EigenCAM, ...")
    targets: tuple[str, ...] = documented(("heg50", "hvg50", "groups"), "gene names, "
                                          '"group:<name>", "groups", "heg50", "hvg50"')
    gene_groups: str | None = documented("runs/genes/gene_groups.csv", "written by "
                                         "02_gene_clustering; None: no groups")
    group_strategy: str = documented(DEFAULT_GROUP_STRATEGY, "strategy of GENE_GROUPS for group "
                                     "targets and the group figures")
    strategies: tuple[str, ...] = documented((), "strategies compared by CAM similarity; []: "
                                             "every one in GENE_GROUPS")
    genes_per_group: int = documented(5, "most variable genes per group whose CAMs are compared")
    n_permutations: int = documented(1000, "label shuffles for the p-value of within − between")
    scale: str = documented("standardised", "targets on the model's standardised scale, or "
                            '"original"')
    layer: str | None = documented(None, "target layer (a module name of the backbone, e.g. "
                                   '"stages.2"); None: automatic')
    reshape: str | None = documented(None, 'None: automatic; "nchw", "nhwc", "tokens" or '
                                     '"tokens:HxW" (the token grid)')
    batch_size: int | None = documented(None, "patches per forward pass; None: 16 on CPU, 64 on "
                                        "GPU")
    seed: int = documented(0, "seed of the patch sample and the permutations")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")

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

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "preset", "runs", "runs_root", "submission", "blend", "gene_groups",
             "group_strategy", "smoke")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    preset: str | None = documented(None, "a file of presets/ (its name) or a YAML path: its "
                                    "values, then the cell's changes")
    runs: tuple[str, ...] = documented(("runs/ridge_effnet_lite0",), "run folders written by "
                                       "05_train; [] or None: find them")
    runs_root: str = documented("runs", "folder searched (any depth) for finished runs when RUNS "
                                "is empty")
    submission: str = documented("submissions/submission.csv", "output CSV; the blend report goes "
                                 "beside it")
    blend: str = documented("global", '"mean", "global" (a weight per run), "group" (per gene '
                            'group), "gene"')
    gene_groups: str | None = documented("runs/genes/gene_groups.csv", "written by "
                                         '02_gene_clustering; for "group" only')
    group_strategy: str | None = documented(DEFAULT_GROUP_STRATEGY, "which strategy of "
                                            'GENE_GROUPS: "kmeans", "prefix", "correlation", …')
    shrink: tuple[float, ...] = documented((0.0, 0.25, 0.5, 0.75, 1.0), "shrinkage towards equal "
                                           "weights tried by CV (1: mean)")
    postprocess: tuple[str, ...] = documented(("shrink_to_mean", "clip"), "tried on OOF, used "
                                              "only if they help; [] for none")
    strict: bool = documented(False, "True: refuse to write a CSV with constant gene columns "
                              "(each one scores r 0)")
    smoke: bool = documented(False, "True: a 1-minute check on 48+16 rows (scores mean nothing), "
                             "outputs in smoke/")

    def __post_init__(self):
        set_field(self, "runs", as_tuple(self.runs))
        smoke_paths(self, ("runs", "runs_root", "submission"))
        smoke_inputs(self, ("gene_groups",))
        set_field(self, "postprocess", as_tuple(self.postprocess))
        set_field(self, "shrink", tuple(float(s) for s in as_tuple(self.shrink)))
        if self.blend not in BLENDS:
            raise ValueError(f"BLEND={self.blend!r} is unknown; choose from {list(BLENDS)}")
        if self.blend == "group" and not (self.gene_groups and self.group_strategy):
            raise ValueError("BLEND='group' needs GENE_GROUPS (a gene_groups.csv written by "
                             "02_gene_clustering) and GROUP_STRATEGY (one of its strategies)")
        if not self.shrink or not all(0.0 <= s <= 1.0 for s in self.shrink):
            raise ValueError(f"SHRINK must list amounts between 0 and 1; got {self.shrink}")
        unknown = sorted(set(self.postprocess) - set(POSTPROCESS_STEPS))
        if unknown:
            raise ValueError(f"POSTPROCESS has unknown steps {unknown}; choose from "
                             f"{list(POSTPROCESS_STEPS)} (or [] for none)")


# --- 00_quickstart ----------------------------------------------------------------------------

@dataclass(frozen=True)
class QuickstartConfig:
    """Parameters of notebooks/00_quickstart.ipynb (see its parameters cell)."""

    CELL: ClassVar[dict[str, tuple[str, ...]]] = {
        "": ("data_dir", "plan", "time_budget", "run_root", "submission", "weights", "smoke",
             "overrides")}

    data_dir: str | None = documented(None, "data folder; None looks in $KIT_DATA_DIR, Kaggle "
                                      "input, Colab Drive, data/")
    plan: str = documented("auto", '"auto" (GPU: gpu_ensemble; CPU: cpu_ensemble, over '
                           'TIME_BUDGET cpu_fast) or a name')
    time_budget: float = documented(120.0, "minutes a CPU plan may take (estimated); over it "
                                    '"auto" picks cpu_fast')
    run_root: str | None = documented(None, "folder of the run folders; None: "
                                      "/kaggle/working/runs, Drive or /content, runs/")
    submission: str | None = documented(None, "output CSV; None: /kaggle/working, /content or "
                                        "submissions/ submission.csv")
    weights: str | None = documented(None, "folder of offline weights files "
                                     "(<timm name>*.safetensors); None: look around")
    smoke: bool = documented(False, "True: a quick check on 48+16 rows (scores mean nothing), "
                             "runs under smoke/")
    overrides: dict = documented(factory=dict, doc='05_train parameters given to every step, e.g. '
                                 '{"BATCH_SIZE": 32}')

    def __post_init__(self):
        if not is_positive(self.time_budget):
            raise ValueError(f"TIME_BUDGET must be minutes > 0; got {self.time_budget!r}")
        if not isinstance(self.overrides, dict) or not all(
                isinstance(k, str) and k.isupper() for k in self.overrides):
            raise ValueError(f"OVERRIDES must be a dict of 05_train parameters by their UPPER_CASE "
                             f"names, e.g. {{'EPOCHS': 2}}; got {self.overrides!r}")
        if "RUN_DIR" in self.overrides or "DATA_DIR" in self.overrides:
            raise ValueError("OVERRIDES cannot set RUN_DIR or DATA_DIR: set RUN_ROOT and DATA_DIR")
