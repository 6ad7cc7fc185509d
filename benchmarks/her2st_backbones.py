"""Per-backbone frozen-feature runs and cross-backbone blends on ../shared/her2st (issue 26).

Extraction passes: tf_efficientnet_lite0/1/2 (the shared ImageNet weights) at their native size
(224/240/260 px) and at 224 px, D4 TTA, FEATURE_STAGES "all", each of the whole patch and of its
centre half; for lite0 at 224 also two HED-jitter copies of every patch (stain augmentation at
feature time) and the Macenko-normalised patches. Each pass is computed once and cached under
runs/her2st/backbones/cache (`cached_features`, or `cached_array` for the jitter copies); every
recipe's features are column subsets of the passes.

    .venv/bin/python -m benchmarks.her2st_backbones --only-extract   # the passes (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

from utils import ensemble, train
from utils.augment import hed_to_rgb, rgb_to_hed
from utils.choices import target_pca_from_target
from utils.config import FeatureSpec, GeneClusteringConfig
from utils.cv import score_folds, split_rows
from utils.data import cache_dir_for, load_data, load_images
from utils.features import cache_entry, cached_features, extract_features
from utils.files import cached_array
from utils.genes import LABEL_FREE, groups_on_rows
from utils.metric import KEYS, score
from utils.models import create_backbone
from utils.places import kit_root
from utils.runs import Run, peak_rss_gb
from utils.train import RidgePath

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
OUT = kit_root() / "runs" / "her2st" / "backbones"
BACKBONES = {"lite0": 224, "lite1": 240, "lite2": 260}  # short name → native input size
HED_LEVEL = {"alpha_limit": 0.1, "beta_limit": 0.01}  # 03's strongest HEDJitter (04's "hed")


def timm_name(short: str) -> str:
    return f"tf_efficientnet_{short}"


def weights_file(short: str) -> Path:
    return SHARED / "weights" / f"{timm_name(short)}.in1k.safetensors"


def list_passes() -> list[tuple[str, int, float, str | None]]:
    """(backbone, size, crop, stain) of every pass, the most needed first (on a busy 2-core
    machine a pass takes 10–60 min, so the last ones may be left out: the grid covers what is
    cached); stain None, "macenko" or "hed<seed>"."""
    native = [(b, s, c, None) for b, s in BACKBONES.items() for c in (1.0, 0.5)]
    at_224 = [(b, 224, 1.0, None) for b, s in BACKBONES.items() if s != 224]
    stains = [("lite0", 224, 1.0, "hed1"), ("lite0", 224, 1.0, "macenko"),
              ("lite0", 224, 0.5, "hed1"), ("lite0", 224, 0.5, "macenko"),
              ("lite0", 224, 1.0, "hed2"), ("lite0", 224, 0.5, "hed2")]
    later = [(b, 224, 0.5, None) for b, s in BACKBONES.items() if s != 224]
    return native + at_224 + stains + later


def pass_name(backbone: str, size: int, crop: float, stain: str | None) -> str:
    return f"{backbone}@{size} crop{crop:g}" + (f" {stain}" if stain else "")


def feature_spec(backbone: str, size: int, crop: float, stain: str | None = None) -> FeatureSpec:
    """The feature set of a pass (D4 TTA, every stage, one crop)."""
    return FeatureSpec(timm_name(backbone), str(weights_file(backbone)), size, tta=True,
                       stages="all", crops=(crop,),
                       stain_norm=stain if stain == "macenko" else None)


def jitter_stains(images: np.ndarray, seed: int, chunk: int = 64) -> np.ndarray:
    """Every patch through HEDJitter at HED_LEVEL, one seeded (alpha, beta) per patch and stain
    (vectorised over a chunk of patches: the kit's rgb_to_hed / hed_to_rgb)."""
    rng = np.random.default_rng(seed)
    a, b = HED_LEVEL["alpha_limit"], HED_LEVEL["beta_limit"]
    alpha = rng.uniform(1 - a, 1 + a, (len(images), 1, 1, 3)).astype(np.float32)
    beta = rng.uniform(-b, b, (len(images), 1, 1, 3)).astype(np.float32)
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):
        rows = slice(start, start + chunk)
        out[rows] = hed_to_rgb(rgb_to_hed(images[rows]) * alpha[rows] + beta[rows])
    return out


def jittered_features(data, backbone: str, size: int, crop: float, seed: int) -> dict:
    """Features of HED-jittered copies of every patch (a pass like `cached_features`' but on
    jittered images; cached beside them under its own name and key)."""
    spec = feature_spec(backbone, size, crop)
    folder = Path(cache_dir_for(data)) / "features"
    model = []

    def compute(split: str) -> np.ndarray:
        if not model:
            model.append(create_backbone(spec.backbone, spec.pretrained, size))
        images = jitter_stains(np.asarray(load_images(data, split)), seed)
        return extract_features(model[0], images, spec)

    features = {}
    for split in ("train", "test"):
        name, key = cache_entry(data, split, spec)
        key = {**key, "hed_jitter": {**HED_LEVEL, "seed": seed}}
        features[split] = cached_array(folder / name.replace(".npy", f"_hed{seed}.npy"), key,
                                       partial(compute, split))
    return features


def load_pass(data, backbone: str, size: int, crop: float, stain: str | None) -> dict:
    """One pass's train and test features (computed on first use, then read from the cache)."""

    if stain and stain.startswith("hed"):
        return jittered_features(data, backbone, size, crop, int(stain[3:]))
    return cached_features(data, feature_spec(backbone, size, crop, stain))


def extract_all(data, log: Path) -> dict[str, float]:
    """Every pass, in order; seconds per pass (a cached pass takes well under one)."""
    seconds = {}
    for spec in list_passes():
        start = time.perf_counter()
        shape = load_pass(data, *spec)["train"].shape
        seconds[pass_name(*spec)] = round(time.perf_counter() - start, 1)
        line = (f"pass {pass_name(*spec)}: {shape}, {seconds[pass_name(*spec)]} s, "
                f"peak RSS {peak_rss_gb()} GB")
        print(line, flush=True)
        with log.open("a") as f:
            f.write(line + "\n")
    return seconds



def finished_passes(log: Path) -> set[str]:
    """Names of the passes the extraction has cached (it logs each once it is written)."""
    if not log.is_file():
        return set()
    return {line.split(":")[0].removeprefix("pass ") for line in log.read_text().splitlines()}


# --- a recipe's features: column subsets of the passes ------------------------------------------

CHANNELS = {"lite0": (16, 24, 40, 112, 320), "lite1": (16, 24, 40, 112, 320),
            "lite2": (16, 24, 48, 120, 352)}  # feature_info channels; then the 1280-d embedding
EMBEDDING = 1280
STAGES = {"embedding": None, "last 2": (-2, -1), "last 3": (-3, -2, -1), "all": "all"}
CROPS = {"whole": (1.0,), "whole + half": (1.0, 0.5)}
TARGETS = ("genes", "pca:8", "pca:16", "pca:32", "pca:64")
STAINS = {None: [None], "hed": [None, "hed1"], "hed x2": [None, "hed1", "hed2"],
          "macenko": ["macenko"]}  # stain → the passes averaged (hed<k>: jitter seed k)


def list_sources() -> list[tuple[str, int, str | None]]:
    """(backbone, size, stain) of every feature source: each backbone at its native size and
    at 224 px; lite0 at 224 also with HED-jitter TTA and Macenko-normalised."""
    sizes = sorted({(b, s) for b, s, _, _ in list_passes()}, key=lambda p: (p[0], -p[1]))
    return [(b, s, None) for b, s in sizes] + [("lite0", 224, s) for s in STAINS if s]


def stage_columns(backbone: str, stages) -> np.ndarray:
    """Columns of a stages="all" pass that hold `stages` (None: the embedding only)."""
    channels = (*CHANNELS[backbone], EMBEDDING)
    bounds, n = np.cumsum((0, *channels)), len(CHANNELS[backbone])
    keep = [] if stages is None else range(n) if stages == "all" else sorted(s % n for s in stages)
    return np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in [*keep, n]])


def source_passes(backbone: str, size: int, stain: str | None, crops) -> list[tuple]:
    """The pass specs a source's features are made of, per crop."""
    return [(backbone, size, c, s) for c in crops for s in STAINS[stain]]


def recipe_features(data, backbone: str, size: int, stain: str | None, stages,
                    crops) -> dict[str, np.ndarray]:
    """Train and test features of a recipe: per crop the chosen stages' columns of its pass
    (HED TTA: averaged over the original and the jittered copies), crops side by side."""
    columns = stage_columns(backbone, stages)
    out = {}
    for split in ("train", "test"):
        parts = []
        for crop in crops:
            copies = [load_pass(data, backbone, size, crop, s)[split][:, columns]
                      for s in STAINS[stain]]
            parts.append(np.mean(copies, axis=0, dtype=np.float32))
        out[split] = np.concatenate(parts, axis=1)
    return out


# --- the kit's fits, in a few small functions (05's ridge and retrieval, 07's blend) --------------

ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)  # 05's default ALPHAS
N_NEAREST, TEMPERATURES = (5, 10, 20, 50), (0.02, 0.05, 0.1)  # 05's retrieval defaults
SHRINK, POSTPROCESS = (0.0, 0.25, 0.5, 0.75, 1.0), ("shrink_to_mean", "clip")  # 07's defaults


@dataclass
class Fit:
    """A member: OOF predictions on the split's fit rows, predictions for its scored rows."""

    oof: np.ndarray
    pred: np.ndarray
    cv: dict
    details: dict = field(default_factory=dict)


def fit_ridge(x: np.ndarray, x_pred: np.ndarray, y: np.ndarray, folds: np.ndarray,
              splitter: str, target: str) -> Fit:
    """05's ridge (nested alpha over the folds; the final fit on every row predicts x_pred)."""

    fit = train.cv_ridge(x, y, x_pred, folds, ALPHAS, None, splitter,
                         target_pca_from_target(target))
    return Fit(fit.oof, fit.test_pred, fit.cv, {"alpha": fit.alpha})


def fit_retrieval(x: np.ndarray, x_pred: np.ndarray, y: np.ndarray, folds: np.ndarray,
                  splitter: str) -> Fit:
    """05's retrieval (nested k and temperature)."""
    fit = train.cv_retrieval(x, y, x_pred, folds, N_NEAREST, TEMPERATURES, splitter)
    return Fit(fit.oof, fit.test_pred, fit.cv, fit.details)


def fit_group_ridge(x: np.ndarray, x_pred: np.ndarray, y: np.ndarray, folds: np.ndarray,
                    splitter: str, target: str, groups: dict[str, np.ndarray]) -> Fit:
    """A ridge per gene group, each with its own nested alpha (chosen on its genes' score) and
    its own target PCs (TARGET pca:K capped at the group's size)."""
    oof, pred = np.zeros(y.shape, np.float32), np.zeros((len(x_pred), y.shape[1]), np.float32)
    alphas = {}
    for name, cols in groups.items():
        k = target.partition(":")[2]
        part_target = f"pca:{min(int(k), len(cols))}" if k else target
        fit = fit_ridge(x, x_pred, y[:, cols], folds, splitter, part_target)
        oof[:, cols], pred[:, cols], alphas[name] = fit.oof, fit.pred, fit.details["alpha"]
    return Fit(oof, pred, score_folds(y, oof, folds, splitter), {"alphas": alphas})


def blend_fits(y: np.ndarray, folds: np.ndarray, splitter: str, fits: dict[str, Fit],
               mode: str = "global", groups: tuple | None = None) -> Fit:
    """07: nested blend weights (global, or per gene group: `groups` = (set of every gene,
    set names, per-fold sets or None)), nested post-processing, then keep the blend only if it
    beats its best member on held-out folds. cv is what 07 reports as submitted."""
    runs = [Run(Path(name), {}, f.cv, folds, f.oof, f.pred) for name, f in fits.items()]
    oof, pred = ensemble.stack_predictions(runs)
    set_of_gene, sets, fold_sets = groups or (np.zeros(y.shape[1], np.int64), ["all genes"],
                                              None)
    blended = ensemble.cv_blend(y, oof, pred, folds, mode, set_of_gene, sets, SHRINK, splitter,
                                fold_sets)
    post = ensemble.cv_postprocess(y, blended.oof, blended.test_pred, folds, POSTPROCESS,
                                   blended.cv, splitter)
    final = ensemble.keep_best(y, folds, splitter, blended, post, runs)
    weights = dict(zip(fits, blended.weights.mean(axis=1).round(3).tolist()))
    return Fit(final["oof"], final["test_pred"], final["cv"],
               {"kept": final["kept"], "blend cv": blended.cv["overall"]["score"],
                "post": "+".join(post.steps), "weights": weights})


def digest(a: np.ndarray) -> bytes:
    """A key for an array's contents."""
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8), digest_size=16).digest()


class SharedSVD:
    """`utils.train.fit_ridge_path` with one SVD per distinct training matrix, reused across
    TARGETs, gene subsets and splits (the same rows in the same order give the same matrix);
    predictions reuse the projected features across alphas. The arithmetic is the kit's (checked
    against `cv_ridge` unpatched: `check_shared_svd`); only the repeats are cached."""
    def __init__(self):
        self.svds: dict[bytes, tuple] = {}
        self.target_axes: dict[bytes, np.ndarray] = {}

    def svd(self, x: np.ndarray) -> tuple:
        """Mean, scale and SVD of the standardised x."""
        key = digest(x)
        if key not in self.svds:
            x = np.asarray(x, dtype=np.float64)
            mean, scale = x.mean(axis=0), x.std(axis=0)
            scale[scale < 1e-12] = 1.0
            self.svds[key] = (mean, scale, *np.linalg.svd((x - mean) / scale,
                                                           full_matrices=False))
        return self.svds[key]

    def fit(self, x: np.ndarray, y: np.ndarray, pca_dim: int | None = None,
            target_dim: int | None = None):
        """The kit's fit_ridge_path(x, y, pca_dim, target_dim), its SVD cached."""
        x_mean, x_scale, u, s, vt = self.svd(x)
        y_mean = y.mean(axis=0, dtype=np.float64)
        k = len(s) if pca_dim is None else min(pca_dim, len(s))
        uty = u[:, :k].T @ (y - y_mean)
        if target_dim is not None:
            y_scale = y.std(axis=0, dtype=np.float64)
            y_scale[y_scale < 1e-12] = 1.0
            key = digest(y)
            if key not in self.target_axes:
                self.target_axes[key] = np.linalg.svd((y - y_mean) / y_scale,
                                                      full_matrices=False)[2]
            axes = self.target_axes[key][:target_dim]
            uty = ((uty / y_scale) @ axes.T @ axes) * y_scale
        return ProjectedPath(x_mean, x_scale, y_mean, vt[:k], s[:k], uty)

    @contextlib.contextmanager
    def active(self):
        """cv_ridge (and 05's ridge) use this fit while the context is open."""
        with mock.patch.object(train, "fit_ridge_path", self.fit):
            yield self


@dataclass
class ProjectedPath(RidgePath):
    """A RidgePath that projects the last x it was asked about once for every alpha."""

    last: tuple = field(default=(None, None), repr=False)

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        if self.last[0] is not x:
            self.last = (x, ((x - self.x_mean) / self.x_scale) @ self.components.T)
        shrink = self.singular / (self.singular ** 2 + alpha)
        return ((self.last[1] * shrink) @ self.uty + self.y_mean).astype(np.float32)


def check_shared_svd(x: dict, y: np.ndarray, folds: np.ndarray, splitter: str) -> float:
    """Largest |difference| between cv_ridge's OOF and test predictions with and without the
    shared SVD (TARGET pca:16): float noise only, or the grid is not the kit's ridge."""
    plain = fit_ridge(x["train"], x["test"], y, folds, splitter, "pca:16")
    with SharedSVD().active():
        shared = fit_ridge(x["train"], x["test"], y, folds, splitter, "pca:16")
    return float(max(np.abs(plain.oof - shared.oof).max(), np.abs(plain.pred - shared.pred).max()))


# --- splits: the four sections (her2st's own test), and each section held out in turn ----------

@dataclass
class Split:
    """Rows to fit on (with 05's slice folds over them) and rows to score."""

    name: str
    fit_rows: np.ndarray  # bool over her2st's train rows
    folds: np.ndarray
    splitter: str
    held_rows: np.ndarray | None  # bool over train rows; None: her2st's test (labels withheld)

    def xs(self, x: dict, centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(features of the fit rows, features of the rows to predict); `centre`: each slice's
        features minus that slice's mean (the fit rows per fold, the predicted rows as one
        slice, as DACON's test set is): label-free, from the images alone."""
        held = x["test"] if self.held_rows is None else x["train"][self.held_rows]
        fit = x["train"][self.fit_rows]
        if not centre:
            return fit, held
        means = np.stack([fit[self.folds == k].mean(axis=0) for k in range(self.folds.max() + 1)])
        return fit - means[self.folds], held - held.mean(axis=0)


def make_splits(data) -> list[Split]:
    """"all": the four sections, 05's slice CV (utils.metric.split_rows: its found slices are
    the sections but for 3 boundary rows); "without Cx": the other three sections, each a fold
    (split_rows finds no slices in C2+C4+C5 and falls back to blocks, so the true sections
    are the folds, as CV='groups:…' would give), and Cx scored."""
    sections = pd.read_csv(HER2ST / "train_sections.csv", dtype=str).set_index("ID")
    section = sections.loc[data.train["ID"], "section"].to_numpy()
    everything = np.ones(len(section), bool)
    folds, splitter, _ = split_rows("slices", data.y, 4)
    splits = [Split("all", everything, folds, splitter, None)]
    for held in sorted(set(section)):
        keep = section != held
        folds = pd.factorize(section[keep])[0]
        splits.append(Split(f"without {held}", keep, folds, "slices", section == held))
    return splits


def score_fit(fit: Fit, split: Split, y: np.ndarray, **extra) -> dict:
    """One row: what chose (slice CV over the fit rows: mean of every part, range, pooled OOF)
    and what confirms (the held-out section's parts)."""
    row = {"split": split.name, **extra, **{f"cv {k}": fit.cv["overall"][k] for k in KEYS[:5]},
           "cv min": fit.cv["min"]["score"], "cv max": fit.cv["max"]["score"],
           "cv oof": fit.cv["oof"]["score"]}
    if split.held_rows is not None:
        held = score(y[split.held_rows], fit.pred)
        row.update({f"held {k}": held[k] for k in KEYS[:5]})
    return row


# --- phase 1: every recipe of every source on every split (what the choices are made from) -----

RECIPE = ["backbone", "size", "stain", "stages", "crops", "target"]


def run_family(data, splits: list[Split], source: tuple, stages: str, crops: str) -> list[dict]:
    """Every TARGET on every split for one feature set (one SVD per distinct training matrix)."""
    backbone, size, stain = source
    x = recipe_features(data, backbone, size, stain, STAGES[stages], CROPS[crops])
    rows = []
    with SharedSVD().active():
        for target in TARGETS:
            for split in splits:
                start = time.perf_counter()
                fit = fit_ridge(*split.xs(x), data.y[split.fit_rows], split.folds,
                                split.splitter, target)
                rows.append(score_fit(fit, split, data.y, backbone=backbone, size=size,
                                      stain=stain or "none", stages=stages, crops=crops,
                                      target=target, n_features=x["train"].shape[1],
                                      alpha=fit.details["alpha"],
                                      seconds=round(time.perf_counter() - start, 2)))
    return rows


def run_grid(data, splits: list[Split], out: Path, done: set[str]) -> pd.DataFrame:
    """The grid (resumable: families already in grid.csv are kept), over the finished passes."""
    path = out / "grid.csv"
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=RECIPE)
    have = set(map(tuple, table[["backbone", "size", "stain", "stages", "crops"]].astype(str)
                   .to_numpy()))
    for source in list_sources():
        for crops in CROPS:
            needed = {pass_name(*spec) for spec in source_passes(*source, CROPS[crops])}
            if not needed <= done:
                print(f"skipped {source} {crops}: passes {sorted(needed - done)} not cached")
                continue
            for stages in STAGES:
                key = tuple(map(str, (*source[:2], source[2] or "none", stages, crops)))
                if key in have:
                    continue
                start = time.perf_counter()
                rows = run_family(data, splits, source, stages, crops)
                table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
                table.to_csv(path, index=False)
                print(f"{key}: {time.perf_counter() - start:.0f} s; all-sections CV by target "
                      f"{[round(r['cv score'], 4) for r in rows if r['split'] == 'all']}",
                      flush=True)
    return table


# --- phase 2: per split, choose on its slice CV, blend, score the held-out section ------------

PLAIN = {"backbone": "lite0", "size": 224, "stain": "none", "stages": "embedding",
         "crops": "whole", "target": "genes"}  # the README's plain ridge
CPU_BEST = {**PLAIN, "stages": "all", "crops": "whole + half", "target": "pca:16"}


def choose(grid: pd.DataFrame, split: Split, **where) -> dict:
    """The recipe with the best slice-CV score over the split's fit rows among `where`."""
    rows = grid[grid["split"] == split.name]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    best = rows.loc[rows["cv score"].idxmax()]
    return {k: (int(best[k]) if k == "size" else best[k]) for k in RECIPE}


def features_of(data, recipe: dict) -> dict[str, np.ndarray]:
    """The features of a recipe row."""
    stain = None if recipe["stain"] == "none" else recipe["stain"]
    return recipe_features(data, recipe["backbone"], int(recipe["size"]), stain,
                           STAGES[recipe["stages"]], CROPS[recipe["crops"]])


def refit(data, split: Split, recipe: dict, kind: str = "ridge", target: str | None = None,
          groups: dict | None = None, centre: bool = False) -> Fit:
    """A member on a split: ridge (TARGET of the recipe unless `target`), per-group ridge, or
    retrieval, on the recipe's features (slice-centred if `centre`)."""
    x = features_of(data, recipe)
    args = (*split.xs(x, centre), data.y[split.fit_rows], split.folds, split.splitter)
    if kind == "retrieval":
        return fit_retrieval(*args)
    if groups is not None:
        return fit_group_ridge(*args, target or recipe["target"], groups)
    return fit_ridge(*args, target or recipe["target"])


def gene_group_sets(strategy: str, data, split: Split) -> tuple:
    """07's weight sets for BLEND="group": groups of `strategy` on the split's fit rows, and for
    a strategy that reads the targets the groups without each fold's rows (as 07 does)."""
    cfg, y = GeneClusteringConfig(), data.y[split.fit_rows]
    groups = groups_on_rows(cfg, strategy, data.genes, y)
    set_of_gene, names = ensemble.weight_sets("group", data.genes, groups)
    if strategy in LABEL_FREE:
        return groups, (set_of_gene, names, None)
    fold_sets = {int(k): ensemble.weight_sets("group", data.genes, groups_on_rows(
        cfg, strategy, data.genes, y[split.folds != k]))[0] for k in np.unique(split.folds)}
    return groups, (set_of_gene, names, fold_sets)


BLENDS = {  # name → (members, BLEND, gene-group strategy)
    "07 three backbones": (["lite0", "lite1", "lite2"], "global", None),
    "07 three backbones + retrieval": (["lite0", "lite1", "lite2", "retrieval"], "global", None),
    "07 three backbones + retrieval + ridge genes":
        (["lite0", "lite1", "lite2", "retrieval", "ridge genes"], "global", None),
    "07 three backbones + retrieval + ridge genes, per prefix group":
        (["lite0", "lite1", "lite2", "retrieval", "ridge genes"], "group", "prefix"),
    "07 three backbones + retrieval + ridge genes, per correlation group":
        (["lite0", "lite1", "lite2", "retrieval", "ridge genes"], "group", "correlation"),
    "07 best backbone: ridge + ridge genes + retrieval":
        (["best", "ridge genes", "retrieval"], "global", None),
}


def split_members(data, grid: pd.DataFrame, split: Split, centre: bool) -> tuple[dict, dict]:
    """The members chosen on the split's slice CV (best recipe per backbone; retrieval and
    ridge on every gene over the best of them; one ridge over the three backbones' features)
    and, on plain features, the fixed baselines: (fits, recipes)."""
    recipes = {b: choose(grid, split, backbone=b, stain="none") for b in BACKBONES
               if b in set(grid["backbone"])}
    recipes["best"] = best = choose(grid, split, stain="none")
    if not centre:
        recipes["plain ridge"], recipes["cpu_best"] = PLAIN, CPU_BEST
    fits = {name: refit(data, split, recipe, centre=centre) for name, recipe in recipes.items()}
    fits["retrieval"] = refit(data, split, best, "retrieval", centre=centre)
    fits["ridge genes"] = refit(data, split, best, target="genes", centre=centre)
    if not centre:
        fits["cpu_best retrieval"] = refit(data, split, CPU_BEST, "retrieval")
        fits["cpu_best ridge genes"] = refit(data, split, CPU_BEST, target="genes")
    if all(b in recipes for b in BACKBONES):  # feature-level fusion: not a 05 run today
        parts = [features_of(data, recipes[b]) for b in BACKBONES]
        x = {k: np.concatenate([p[k] for p in parts], axis=1) for k in ("train", "test")}
        fits["one ridge on the three backbones' features"] = fit_ridge(
            *split.xs(x, centre), data.y[split.fit_rows], split.folds, split.splitter,
            best["target"])
    return fits, recipes


def split_blends(data, split: Split, fits: dict, group_sets: dict) -> dict[str, Fit]:
    """07 over the members: every BLENDS entry whose members exist, and today's blend."""
    y, blends = data.y[split.fit_rows], {}
    for name, (members, mode, strategy) in BLENDS.items():
        if set(members) <= set(fits):  # every backbone's passes are cached
            blends[name] = blend_fits(y, split.folds, split.splitter,
                                      {m: fits[m] for m in members}, mode,
                                      group_sets.get(strategy))
    today = ("cpu_best", "cpu_best ridge genes", "cpu_best retrieval")
    if set(today) <= set(fits):
        blends["07 cpu_best blend (ensemble.yaml today)"] = blend_fits(
            y, split.folds, split.splitter, {m: fits[m] for m in today})
    return blends


CENTRED = " (slice-centred)"


def run_split(data, grid: pd.DataFrame, split: Split) -> list[dict]:
    """Every member, baseline and blend on one split, on plain and on slice-centred features;
    the blend with the best slice CV is the split's chosen submission (among the plain ones,
    and among all)."""
    start, rows, candidates = time.perf_counter(), [], {}
    group_sets = {s: gene_group_sets(s, data, split)[1] for s in ("prefix", "correlation")}
    for centre in (False, True):
        with SharedSVD().active():
            fits, recipes = split_members(data, grid, split, centre)
        blends = split_blends(data, split, fits, group_sets)
        tag = CENTRED if centre else ""
        for name, fit in {**fits, **blends}.items():
            rows.append(score_fit(fit, split, data.y, what=name + tag, **recipes.get(name, {}),
                                  **{k: str(v) for k, v in fit.details.items() if k != "curve"}))
        candidates.update({name + tag: fit for name, fit in blends.items() if name in BLENDS})
    for label, pool in (("chosen blend, plain features", [n for n in candidates
                                                          if CENTRED not in n]),
                        ("chosen blend", list(candidates))):
        chosen = max(pool, key=lambda n: candidates[n].cv["overall"]["score"])
        rows.append(score_fit(candidates[chosen], split, data.y, what=label, chosen=chosen))
    print(f"{split.name}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def run_groups(data, grid: pd.DataFrame, split: Split) -> list[dict]:
    """Per-gene-group ridge (each group its own alpha and target PCs) against one ridge, on the
    split's chosen features, for label-free (prefix) and correlation groups."""
    best = choose(grid, split, stain="none")
    rows = []
    with SharedSVD().active():
        for target in dict.fromkeys((best["target"], "genes")):
            label = "the chosen TARGET" if target == best["target"] else f"TARGET {target}"
            one = refit(data, split, best, target=target)
            rows.append(score_fit(one, split, data.y, what=f"one ridge, {label}", **best))
            for strategy in ("prefix", "correlation"):
                groups = gene_group_sets(strategy, data, split)[0]
                fit = refit(data, split, best, target=target, groups=groups)
                rows.append(score_fit(fit, split, data.y, what=f"a ridge per {strategy} group, "
                                      f"{label}", n_groups=len(groups), **best))
    return rows


# --- tables -------------------------------------------------------------------------------------

PARTS = ["score", "cells", "max_gene", "heg50", "hvg50"]


def summarise(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over the four held-out sections of every part (confirming), the mean slice CV over
    the three fit sections (choosing), the worst section against cpu_best, and the slice CV
    over all four sections where the row exists there (the headline a 05/07 run prints)."""
    held = table[table["split"] != "all"]
    out = held.groupby(by, sort=False)[[f"held {k}" for k in PARTS] + ["cv score"]].mean()
    out["held min"] = held.groupby(by, sort=False)["held score"].min()
    reference = held[held["what"] == "cpu_best"].set_index("split")["held score"] \
        if "what" in held else None
    if reference is not None and len(reference):
        gap = held.assign(gap=held["held score"] - held["split"].map(reference))
        out["worst vs cpu_best"] = gap.groupby(by, sort=False)["gap"].min()
    everything = table[table["split"] == "all"].groupby(by, sort=False)
    out["all-sections cv"] = everything["cv score"].mean()
    out["all-sections cv range"] = everything.apply(
        lambda g: f"{g['cv min'].iloc[0]:.3f}–{g['cv max'].iloc[0]:.3f}")
    return out


def stain_table(grid: pd.DataFrame) -> pd.DataFrame:
    """lite0 at 224: the recipe chosen without stain handling, then the same recipe with HED
    TTA and with Macenko, and lite0 choosing among the three by slice CV."""
    rows = []
    for split in grid["split"].unique():
        here = grid[(grid["split"] == split) & (grid["backbone"] == "lite0")]
        best = here[here["stain"] == "none"].loc[lambda t: t["cv score"].idxmax()]
        same = here[(here[["stages", "crops", "target"]] == best[["stages", "crops", "target"]]
                     ).all(axis=1)]
        for _, row in same.iterrows():
            rows.append({**row.to_dict(), "what": f"lite0 recipe, stain {row['stain']}"})
        rows.append({**here.loc[here["cv score"].idxmax()].to_dict(),
                     "what": "lite0, stain chosen by slice CV"})
    return pd.DataFrame(rows)


def choices_table(table: pd.DataFrame) -> pd.DataFrame:
    """What each split chose for each backbone: the recipe, its slice CV, its held-out score."""
    rows = table[table["what"].isin([*BACKBONES, "best"])]
    return rows[["split", "what", *RECIPE, "cv score", "cv min", "cv max", "held score"]]


def show(title: str, frame: pd.DataFrame, out: Path, name: str) -> None:
    frame.to_csv(out / name)
    with pd.option_context("display.width", 250, "display.max_columns", 40,
                           "display.max_colwidth", 70):
        print(f"\n== {title} ({out / name})\n{frame.round(4).to_string()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-extract", action="store_true")
    parser.add_argument("--no-extract", action="store_true",
                        help="analyse the passes cached so far (another process extracts)")
    parser.add_argument("--grid-only", action="store_true", help="stop after the grid")
    args = parser.parse_args()
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KIT_CACHE_DIR", str(OUT / "cache"))
    data = load_data(HER2ST)
    if not args.no_extract:
        extract_all(data, OUT / "passes.log")
    if args.only_extract:
        return
    done, splits = finished_passes(OUT / "passes.log"), make_splits(data)
    x = recipe_features(data, "lite0", 224, None, "all", (1.0,))
    diff = check_shared_svd(x, data.y, splits[0].folds, splits[0].splitter)
    print(f"shared SVD vs cv_ridge: max |diff| {diff:.2e}", flush=True)
    grid = run_grid(data, splits, OUT, done)
    if args.grid_only:
        return
    table = pd.DataFrame([row for split in splits for row in run_split(data, grid, split)])
    groups = pd.DataFrame([row for split in splits for row in run_groups(data, grid, split)])
    show("choices per split (cv: choosing; held: confirming)", choices_table(table), OUT,
         "choices.csv")
    show("members, baselines and blends", summarise(table, ["what"]), OUT, "summary.csv")
    show("per-gene-group ridge", summarise(groups, ["what"]), OUT, "groups.csv")
    show("stain handling (lite0 at 224)", summarise(stain_table(grid), ["what"]), OUT,
         "stains.csv")
    table.to_csv(OUT / "splits.csv", index=False)
    groups.to_csv(OUT / "group_rows.csv", index=False)
    print(f"peak RSS {peak_rss_gb()} GB")


if __name__ == "__main__":
    main()
