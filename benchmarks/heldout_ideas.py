"""One ridge strength per target PC, retrieval plus a residual ridge, and sub-spot tiles, on
held-out her2st sections, beside the CPU presets they would change.

Each variant is a 05 preset with parameter overrides (ALPHA_PER_COMPONENT, RECIPE
"retrieval_ridge", FEATURE_TILES). Each her2st section is held out in turn; on the other three
(one CV fold per section, as `cv_ridge`'s slice CV) the variant's nested CV chooses alpha, k,
temperature, and "<a> or <b>" rows choose between two variants by that CV; the held-out section
only confirms. 07 rows blend a rotation's member runs with 07's nested global blend. Features
are computed once on the full data through the kit's cache (`cached_features`, $KIT_CACHE_DIR)
and sliced per rotation; CENTRE_FEATURES centres each training section and the held-out one by
their own means.

    python -m benchmarks.heldout_ideas [--only NAME ...] [--out runs/her2st/ideas]
        [--shared ../shared] [--set TTA=false ...]

Writes `<out>/rows.csv` (one row per variant and held-out section: every metric part, the
choosing CV, seconds) and prints the per-section table and the mean over sections.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.her2st_backbones import Fit, blend_fits
from utils.config import TrainConfig, from_params
from utils.data import load_data
from utils.features import cached_features
from utils.metric import KEYS, score
from utils.places import kit_root
from utils.train import cv_retrieval, cv_retrieval_ridge, cv_ridge, cv_ridge_per_component

SHARED = kit_root().parent / "shared"  # her2st/ and weights/ (--shared names another folder)
LITE = ("lite0", "lite1", "lite2")
# name → (preset, overrides); every run keeps its preset's features unless FEATURE_TILES is set
VARIANTS = {
    "cpu_best": ("cpu_best", {}),
    "cpu_best +apc": ("cpu_best", {"ALPHA_PER_COMPONENT": True}),
    "cpu_best retrieval_ridge": ("cpu_best", {"RECIPE": "retrieval_ridge"}),
    "cpu_best tiles2": ("cpu_best", {"FEATURE_TILES": 2}),
    **{f"cpu_{b}": (f"cpu_{b}", {}) for b in LITE},
    **{f"cpu_{b} +apc": (f"cpu_{b}", {"ALPHA_PER_COMPONENT": True}) for b in LITE},
    **{f"cpu_{b} pca16 +apc": (f"cpu_{b}", {"ALPHA_PER_COMPONENT": True, "TARGET_PCA": 16})
       for b in LITE},
    **{f"cpu_{b} retrieval_ridge": (f"cpu_{b}", {"RECIPE": "retrieval_ridge"}) for b in LITE},
    "cpu_lite0 retrieval": ("cpu_lite0", {"RECIPE": "retrieval"}),
    "cpu_lite0 tiles2 retrieval_ridge": ("cpu_lite0", {"RECIPE": "retrieval_ridge",
                                                       "FEATURE_TILES": 2}),
    **{f"cpu_{b} tiles2": (f"cpu_{b}", {"FEATURE_TILES": 2}) for b in LITE},
    **{f"cpu_{b} tiles2 +apc": (f"cpu_{b}", {"FEATURE_TILES": 2, "ALPHA_PER_COMPONENT": True})
       for b in LITE},
}
CHOICES = {f"{a} or {b}": (a, b) for a, b in [
    ("cpu_best", "cpu_best +apc"), ("cpu_best", "cpu_best retrieval_ridge"),
    ("cpu_best", "cpu_best tiles2"),
    *[(f"cpu_{b}", f"cpu_{b} +apc") for b in LITE],
    *[(f"cpu_{b}", f"cpu_{b} retrieval_ridge") for b in LITE],
    *[(f"cpu_{b}", f"cpu_{b} tiles2") for b in LITE],
]}
BLENDS = {  # 07 over member runs of the same rotation
    "cpu_lite0 + retrieval_ridge": ["cpu_lite0", "cpu_lite0 retrieval_ridge"],
    "cpu_lite0 + retrieval": ["cpu_lite0", "cpu_lite0 retrieval"],
    "cpu_lite0 tiles2 + retrieval": ["cpu_lite0 tiles2", "cpu_lite0 retrieval"],
    "cpu_lite0 tiles2 + retrieval_ridge": ["cpu_lite0 tiles2", "cpu_lite0 tiles2 retrieval_ridge"],
    "cpu_ensemble": [f"cpu_{b}" for b in LITE],
    "cpu_ensemble +apc": [f"cpu_{b} +apc" for b in LITE],
    "cpu_ensemble + retrieval_ridge": [*(f"cpu_{b}" for b in LITE), "cpu_lite0 retrieval_ridge"],
    "cpu_ensemble, lite0 tiles2": ["cpu_lite0 tiles2", "cpu_lite1", "cpu_lite2"],
    "cpu_ensemble, lite0 tiles2 + retrieval_ridge": ["cpu_lite0 tiles2", "cpu_lite1", "cpu_lite2",
                                                     "cpu_lite0 retrieval_ridge"],
    "cpu_ensemble, tiles2": [f"cpu_{b} tiles2" for b in LITE],
}


def variant_config(name: str, weights: Path = SHARED / "weights",
                   changes: dict | None = None) -> TrainConfig:
    """A variant's 05 config: its preset, its overrides, `changes` (--set), the weights file in
    `weights`."""
    preset, overrides = VARIANTS[name]
    params = yaml.safe_load((kit_root() / "presets" / f"{preset}.yaml").read_text())
    params.update({**overrides, **(changes or {})})
    backbone = params.get("BACKBONE", "tf_efficientnet_lite0")
    params["PRETRAINED"] = str(weights / f"{backbone}.in1k.safetensors")
    return from_params(TrainConfig, params)


def rotation_features(x: np.ndarray, fit: np.ndarray, held: np.ndarray, folds: np.ndarray,
                      centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """Features of the fit rows and of the held-out rows; `centre`: each training section's
    and the held-out section's own mean subtracted (label-free, as CENTRE_FEATURES)."""
    x_fit, x_held = x[fit], x[held]
    if not centre:
        return x_fit, x_held
    means = np.stack([x_fit[folds == k].mean(axis=0) for k in range(folds.max() + 1)])
    return x_fit - means[folds], x_held - x_held.mean(axis=0)


def fit_variant(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, x_pred: np.ndarray,
                folds: np.ndarray) -> Fit:
    """05's frozen-feature recipe of `cfg` on arrays (nested choices over `folds`)."""
    if cfg.recipe == "retrieval_ridge":
        r = cv_retrieval_ridge(x, y, x_pred, folds, cfg.n_nearest, cfg.temperatures, cfg.alphas,
                               cfg.pca_dim, "slices", cfg.target_pca)
        return Fit(r.oof, r.test_pred, r.cv, {k: r.details[k] for k in
                                               ("n_nearest", "temperature", "alpha")})
    if cfg.recipe == "retrieval":
        r = cv_retrieval(x, y, x_pred, folds, cfg.n_nearest, cfg.temperatures, "slices")
        return Fit(r.oof, r.test_pred, r.cv, {"n_nearest": r.details["n_nearest"]})
    ridge = cv_ridge_per_component if cfg.alpha_per_component else cv_ridge
    r = ridge(x, y, x_pred, folds, cfg.alphas, cfg.pca_dim, "slices", cfg.target_pca)
    return Fit(r.oof, r.test_pred, r.cv, {"alpha": r.alpha})


def result_row(name: str, held: str, fit: Fit, truth: np.ndarray, seconds: float) -> dict:
    """One table row: the held-out section's parts, the choosing CV (mean over the training
    sections' folds) and its range, seconds."""
    parts = score(truth, fit.pred)
    return {"variant": name, "section": held, **{k: parts[k] for k in KEYS[:5]},
            "choosing cv": fit.cv["overall"]["score"], "cv min": fit.cv["min"]["score"],
            "cv max": fit.cv["max"]["score"], "seconds": round(seconds, 1),
            "details": str(fit.details)}


def run_rotation(held: str, names: list[str], data, sections: np.ndarray,
                 features: dict[str, np.ndarray], weights: Path = SHARED / "weights",
                 changes: dict | None = None) -> list[dict]:
    """Every variant, choice and blend with `held` held out."""
    fit_rows, held_rows = sections != held, sections == held
    folds = pd.factorize(sections[fit_rows])[0]
    y, truth = data.y[fit_rows], data.y[held_rows]
    fits, rows = {}, []
    for name in names:
        cfg = variant_config(name, weights, changes)
        start = time.perf_counter()
        x, x_held = rotation_features(features[cfg.feature_spec.tag], fit_rows, held_rows,
                                      folds, cfg.centre_features)
        fits[name] = fit_variant(cfg, x, y, x_held, folds)
        rows.append(result_row(name, held, fits[name], truth, time.perf_counter() - start))
        print(f"{held} {name}: held {rows[-1]['score']:.4f} cv {rows[-1]['choosing cv']:.4f} "
              f"{rows[-1]['seconds']} s", flush=True)
    for name, (a, b) in CHOICES.items():
        if a in fits and b in fits:
            pick = max((a, b), key=lambda n: fits[n].cv["overall"]["score"])
            rows.append({**result_row(name, held, fits[pick], truth, 0.0), "details": pick})
    for name, members in BLENDS.items():
        if all(m in fits for m in members):
            start = time.perf_counter()
            blend = blend_fits(y, folds, "slices", {m: fits[m] for m in members})
            rows.append(result_row(name, held, blend, truth, time.perf_counter() - start))
    return rows


def load_features(names: list[str], data, weights: Path,
                  changes: dict | None = None) -> dict[str, np.ndarray]:
    """Train features of every variant's spec (from the cache; computed when missing)."""
    out = {}
    for name in names:
        spec = variant_config(name, weights, changes).feature_spec
        if spec.tag not in out:
            start = time.perf_counter()
            out[spec.tag] = cached_features(data, spec)["train"]
            print(f"features {spec.tag}: {out[spec.tag].shape}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return out


def load_her2st(folder: Path) -> tuple:
    """her2st's data and each train row's section (benchmark-only metadata)."""
    data = load_data(folder)
    meta = pd.read_csv(folder / "train_sections.csv", dtype=str).set_index("ID")
    return data, meta.loc[data.train["ID"], "section"].to_numpy()


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over the held-out sections of every part and of the choosing CV, each section's
    score beside it, the worst section and seconds."""
    cols = [*KEYS[:5], "choosing cv", "seconds"]
    summary = table.groupby("variant", sort=False)[cols].mean()
    by_section = table.pivot(index="variant", columns="section", values="score")
    return summary.join(by_section).round(4)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(VARIANTS),
                        help="variants to fit (choices and blends whose runs are all fitted "
                             "follow)")
    parser.add_argument("--out", default="runs/her2st/ideas")
    parser.add_argument("--shared", type=Path, default=SHARED,
                        help="the folder holding her2st/ and weights/")
    parser.add_argument("--set", nargs="*", default=[], metavar="PARAM=VALUE",
                        help="05 parameters (YAML values) changed in every variant, e.g. "
                             "TTA=false")
    args = parser.parse_args(argv)
    changes = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    data, sections = load_her2st(args.shared / "her2st")
    weights = args.shared / "weights"
    features = load_features(args.only, data, weights, changes)
    rows = [row for held in sorted(set(sections))
            for row in run_rotation(held, args.only, data, sections, features, weights, changes)]
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "rows.csv", index=False)
    print(table.drop(columns="details").round(4).to_string(index=False))
    print("\nmean over the held-out sections:")
    print(summarise(table).to_string())
    return table


if __name__ == "__main__":
    main()
