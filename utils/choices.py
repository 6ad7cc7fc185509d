"""What each name-valued parameter accepts, and the parsers of parameters given as text.

The vocabularies below (recipes, splitters, loss terms, blends, CAM methods, augmentation
policies and candidates, …) are the single list each stage module registers its
implementations under (a test checks that they agree); `utils.config` validates every
notebook parameter against them. This module imports nothing from the kit and nothing heavy.
"""

from __future__ import annotations

# --- vocabularies: what each name-valued parameter accepts ------------------------------------

RECIPES = ("finetune", "retrieval", "retrieval_ridge", "ridge")  # 05 RECIPE (utils.train)
SPLITTERS = ("slices", "blocks", "file", "random")  # 05 CV, the part before any ':'
GROUP_MODES = ("heads", "models")  # 05 GROUP_MODE
HEAD_INITS = ("ridge", "random")  # 05 HEAD_INIT
MPP_FITS = ("pad", "tile", "resize")  # 05 MPP_FIT (utils.models.fit_field)
FEATURE_DTYPES = ("float32", "float16")  # 05 FEATURE_DTYPE (utils.features.cached_features)
STAIN_NORMS = ("macenko",)  # 05 STAIN_NORM besides None (utils.features.normalise_stains)
# 05 TTA: the views averaged (utils.models.tta_views): True the 8 dihedral ones (D4), "flips"
# the 4 of flipping each axis or both (half the passes), False the patch alone
TTA_VIEWS = {True: 8, "flips": 4, False: 1}
TTA_TAGS = {True: "d4", "flips": "flips", False: "noTTA"}  # in feature cache names
# 05 COMPILE: torch.compile the backbone for frozen-feature extraction (utils.features): "auto"
# on CPU for extractions of at least COMPILE_MIN_PASSES forward passes (1.8x on 2 cores, after a
# one-off compile of ~5-50 s), True on every device, False never
COMPILE_CHOICES = ("auto", True, False)
COMPILE_MIN_PASSES = 4096
# DACON patches: Visium spots are 100 µm apart centre to centre and ~329 px apart in the public
# spot coordinates of the same liver sections, so 100 / 329 ≈ 0.30 µm/px (0.26–0.30 across
# the sections).
DACON_MPP = 0.3
SMOKE_PX = 64  # SMOKE = True: model input size cap (04, 05), a quick check, not a score
BLENDS = ("mean", "global", "group", "gene")  # 07 BLEND (utils.ensemble)
POSTPROCESS_STEPS = ("shrink_to_mean", "clip")  # 07 POSTPROCESS (utils.ensemble)
STRATEGIES = ("kmeans", "prefix", "correlation", "file", "functional")  # 02 gene groupings
OTHER = "other"  # the group of genes a strategy leaves in no named group
UNMATCHED_RULES = (OTHER, "nearest")  # 02 functional: where genes in no gene set go
DEFAULT_GROUP_STRATEGY = "prefix"  # the gene grouping 06 and 07 use unless told otherwise
# 05 LOSS: term name → weight (utils.losses: a function per name); the default is the seed
# team's α·MSE + β·(1 − Pearson) + (1 − α − β)·covariance MSE with α = 0.3, β = 0.6.
LOSSES = ("mse", "pearson", "spot_pearson", "covariance")
DEFAULT_LOSS = {"mse": 0.3, "pearson": 0.6, "covariance": 0.1}
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


# --- augmentation: 05's built-in AUGMENT policies and the candidates 03 screens --------------
# A policy is a list of `{"name": albumentations class or kit transform, "params": {...}}`.
BORDER_REFLECT_101 = 4  # cv2.BORDER_REFLECT_101, without importing cv2
AUGMENT_POLICIES: dict[str, list[dict]] = {
    "none": [],
    # the eight dihedral views (flips × 90° rotations), each equally likely
    "flips": [{"name": "SquareSymmetry", "params": {"p": 1.0}}],
    # the DACON winners' final list: flips, mild shift-scale-rotate, mild brightness/contrast
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
    "Affine": AUGMENT_POLICIES["seed"][1]["params"],
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


# --- self-supervised adaptation: 04's objectives and the transforms its views are made of ---
OBJECTIVES = ("simclr", "byol", "dino")  # 04 OBJECTIVE (utils.adapt: a class per name)
# 04 VIEWS joins these names with "+" (e.g. "flips+hed"); a part may also be a policy file
# (03's augment_policy.json). Photometric ones are the strongest level of a 03 candidate,
# applied to 80% of the views (SimCLR's colour-jitter probability); "crop" takes 40–100% of the
# patch and resizes it back to IMG_SIZE.
VIEW_P = 0.8
VIEW_TRANSFORMS: dict[str, list[dict]] = {
    "flips": AUGMENT_POLICIES["flips"],
    "color": [{"name": "ColorJitter", "params": {**PHOTOMETRIC["ColorJitter"][-1], "p": VIEW_P}}],
    "hed": [{"name": "HEDJitter", "params": {**PHOTOMETRIC["HEDJitter"][-1], "p": VIEW_P}}],
    "blur": [{"name": "GaussianBlur", "params": {**PHOTOMETRIC["GaussianBlur"][-1], "p": 0.5}}],
    "crop": [{"name": "RandomResizedCrop", "params": {"scale": [0.4, 1.0], "p": 1.0}}],
}


# --- parsers and checks: parameters given as text or lists --------------------------------------

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


def check_tta(tta) -> bool | str:
    """TTA is True, "flips" or False (a ValueError naming it otherwise)."""
    if not any(tta is key or (isinstance(key, str) and tta == key) for key in TTA_VIEWS):
        raise ValueError(f"TTA={tta!r}: choose True (8 views), \"flips\" (4) or False (1)")
    return tta


def check_compile(compile_: bool | str) -> bool | str:
    """COMPILE is "auto", True or False (a ValueError naming it otherwise)."""
    if not any(compile_ is key or (isinstance(key, str) and compile_ == key)
               for key in COMPILE_CHOICES):
        raise ValueError(f"COMPILE={compile_!r}: choose \"auto\" (on CPU, for long "
                         "extractions), True (every device) or False")
    return compile_


def check_stain_norm(stain_norm: str | None) -> str | None:
    """STAIN_NORM is None or a name of STAIN_NORMS, or a ValueError naming it."""
    if stain_norm is not None and stain_norm not in STAIN_NORMS:
        raise ValueError(f"STAIN_NORM={stain_norm!r}: choose None or one of {list(STAIN_NORMS)}")
    return stain_norm


def check_augment(spec) -> None:
    """AUGMENT is a built-in policy name or the path of a policy JSON file (read when training
    starts)."""
    if str(spec) in AUGMENT_POLICIES or str(spec).endswith(".json"):
        return
    raise ValueError(f"AUGMENT={str(spec)!r} is neither a built-in policy "
                     f"{sorted(AUGMENT_POLICIES)} nor a policy file (*.json, e.g. "
                     "runs/augment/augment_policy.json from 03)")


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


def check_views(spec: str) -> tuple[str, ...]:
    """VIEWS as its parts: names of VIEW_TRANSFORMS or policy files (*.json), joined by '+'."""
    parts = tuple(p.strip() for p in str(spec).split("+"))
    bad = [p for p in parts if p not in VIEW_TRANSFORMS and not p.endswith(".json")]
    if bad or not parts:
        raise ValueError(f"VIEWS={spec!r}: unknown part(s) {bad}; join names of "
                         f"{list(VIEW_TRANSFORMS)} or policy files (*.json, e.g. "
                         "runs/augment/augment_policy.json from 03) with '+'")
    return parts



def check_loss(loss) -> dict[str, float]:
    """LOSS as {term: weight} (a term name alone means weight 1): known terms of LOSSES, weights
    >= 0, at least one > 0; or a ValueError naming LOSS."""
    if isinstance(loss, str):
        loss = {loss: 1.0}
    try:
        weights = {str(k): float(v) for k, v in dict(loss).items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"LOSS must map loss terms to weights, e.g. {DEFAULT_LOSS}; got "
                         f"{loss!r}") from err
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown or not weights or min(weights.values()) < 0 or max(weights.values()) <= 0:
        raise ValueError(f"LOSS={loss!r}: terms must be of {list(LOSSES)} (unknown: {unknown}) "
                         "with weights >= 0, at least one > 0")
    return weights
