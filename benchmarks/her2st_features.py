"""Richer frozen features on ../shared/her2st with the kit's honest CV (slices, nested alphas):
several backbone stages (FEATURE_STAGES), centre crops (FEATURE_CROPS) and Macenko stain
normalisation (STAIN_NORM), each a ridge row; then 07's nested blend with the existing runs and
a simulated unseen section (train on three sections, score the fourth).

Every row: lite0 ImageNet weights from the shared file, 224 px, D4 TTA, CV = "slices" (the 4
sections), the default ridge alphas. Three extraction passes are computed through
`cached_features` (stages "all" of the whole patch, of its centre half, and of the
Macenko-normalised patch); every other variant's features are column subsets of one pass (a
stage's pooled map does not depend on which other stages are kept) and are written into the
feature cache under that variant's own name and key, so each row is an ordinary 05 ridge run.
The default columns of a pass are checked against today's cached features.

    .venv/bin/python -m benchmarks.her2st_features [--out runs/her2st/features]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from utils import ensemble
from utils.config import TrainConfig
from utils.data import cache_dir_for, load_data
from utils.files import cached_array
from utils.metric import KEYS, score
from utils.places import kit_root
from utils.runs import peak_rss_gb

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
RECIPES = kit_root() / "runs" / "her2st" / "recipes"  # her2st_recipes.py: baseline runs, cache
PASSES = {  # extraction pass → its feature parameters (every stage of lite0: 5 maps + embedding)
    "whole": {"feature_stages": "all"},
    "macenko": {"feature_stages": "all", "stain_norm": "macenko"},
    "centre half": {"feature_stages": "all", "feature_crops": (0.5,)},
}
VARIANTS = {  # name → TrainConfig changes (features derived from the passes)
    "ridge": {},
    "FEATURE_STAGES=-1": {"feature_stages": (-1,)},
    "FEATURE_STAGES=-2,-1": {"feature_stages": (-2, -1)},
    "FEATURE_STAGES=-3,-2,-1": {"feature_stages": (-3, -2, -1)},
    "FEATURE_STAGES=all": {"feature_stages": "all"},
    "FEATURE_STAGES=all, TARGET=pca:16": {"feature_stages": "all", "target_pca": 16},
    "FEATURE_STAGES=all, TARGET=pca:64": {"feature_stages": "all", "target_pca": 64},
    "STAIN_NORM=macenko": {"stain_norm": "macenko"},
    "STAIN_NORM=macenko, FEATURE_STAGES=all": {"stain_norm": "macenko",
                                               "feature_stages": "all"},
    "FEATURE_CROPS=0.5": {"feature_crops": (0.5,)},
    "FEATURE_CROPS=1,0.5": {"feature_crops": (1.0, 0.5)},
    "FEATURE_CROPS=1,0.5, FEATURE_STAGES=all": {"feature_crops": (1.0, 0.5),
                                                "feature_stages": "all"},
}
STAGE_CHANNELS = (16, 24, 40, 112, 320, 1280)  # lite0's feature_info channels, then embedding


def base_config(data_dir: Path, run_dir: Path) -> TrainConfig:
    """The benchmark's settings (as her2st_recipes.py)."""
    return TrainConfig(data_dir=str(data_dir), run_dir=str(run_dir), recipe="ridge",
                       backbone="tf_efficientnet_lite0", pretrained=str(WEIGHTS), img_size=224,
                       cv="slices")


def stage_columns(stages) -> np.ndarray:
    """Columns of a stages="all" pass that hold `stages` (None: the embedding only)."""
    bounds = np.cumsum((0, *STAGE_CHANNELS))
    n = len(STAGE_CHANNELS) - 1
    keep = [] if stages is None else range(n) if stages == "all" else sorted(s % n for s in stages)
    return np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in [*keep, n]])


def derive(cfg: TrainConfig, data, passes: dict[str, dict]) -> None:
    """Write a variant's features into the cache from the passes' columns."""
    from utils.features import cache_entry

    folder = Path(cache_dir_for(data)) / "features"
    columns = stage_columns(cfg.feature_stages)
    for split in ("train", "test"):
        name, key = cache_entry(data, split, cfg.feature_spec)
        if cfg.stain_norm:
            sources = [passes["macenko"][split]]
        else:
            sources = [passes["whole" if c == 1.0 else "centre half"][split]
                       for c in cfg.feature_crops]
        cached_array(folder / name, key,
                     partial(np.concatenate, [s[:, columns] for s in sources], axis=1))


def row(name: str, cv: dict, seconds: float, **extra) -> dict:
    """One table row: CV mean, range and pooled OOF, every part."""
    return {"variant": name, **{k: cv["overall"][k] for k in KEYS},
            "min": cv["min"]["score"] if "min" in cv else np.nan,
            "max": cv["max"]["score"] if "max" in cv else np.nan,
            "oof": cv["oof"]["score"], "seconds": round(seconds, 1), **extra}


def extract_passes(base: TrainConfig, data, names: list[str]) -> tuple[dict, dict]:
    """The chosen extraction passes (cached) and their wall seconds."""
    from utils.features import cached_features

    passes, seconds = {}, {}
    for name in names:
        change = PASSES[name]
        start = time.perf_counter()
        passes[name] = cached_features(data, replace(base, **change).feature_spec)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"pass {name}: {passes[name]['train'].shape}, {seconds[name]} s, "
              f"peak RSS {peak_rss_gb()} GB", flush=True)
    return passes, seconds


def check_default(passes: dict, base: TrainConfig, data) -> float:
    """Largest difference between the embedding columns of the stages pass and today's cached
    default features (the same forward pass: should be float noise only)."""
    from utils.features import cached_features

    today = cached_features(data, base.feature_spec)["train"]
    return float(np.abs(passes["whole"]["train"][:, stage_columns(None)] - today).max())


def slug(name: str) -> str:
    """A run folder name for a variant."""
    return name.replace(", ", "_").replace("=", "-").replace(",", ".").replace(":", "")


def moved(cv: dict, reference: dict) -> str:
    """The metric parts that moved most against the baseline, e.g. "heg50 +0.012"."""
    parts = {k: cv["overall"][k] - reference["overall"][k] for k in KEYS[1:5]}
    order = sorted(parts, key=lambda k: -abs(parts[k]))
    return ", ".join(f"{k} {parts[k]:+.3f}" for k in order[:2])


def blend(y: np.ndarray, folds: np.ndarray, splitter: str, runs: list) -> tuple[dict, dict]:
    """07's nested blend (global weights, then post-processing, then keep-the-best) of runs:
    (the blend's CV, what 07 would submit)."""
    oof, test = ensemble.stack_predictions(runs)
    genes = [str(i) for i in range(y.shape[1])]
    sets, names, _ = ensemble.blend_sets("global", genes, y, folds)
    blended = ensemble.cv_blend(y, oof, test, folds, "global", sets, names,
                                (0.0, 0.25, 0.5, 0.75, 1.0), splitter)
    post = ensemble.cv_postprocess(y, blended.oof, blended.test_pred, folds,
                                   ("shrink_to_mean", "clip"), blended.cv, splitter)
    final = ensemble.keep_best(y, folds, splitter, blended, post, runs)
    print(final["note"], "; weights", blended.weights.ravel().round(3).tolist(), flush=True)
    return (post.cv if post.steps else blended.cv), final


def run_variants(base: TrainConfig, data, passes: dict, pass_seconds: dict, out: Path,
                 folds: np.ndarray, splitter: str) -> tuple[list, dict]:
    """A ridge run per variant (features derived from the passes): rows and runs."""
    from utils import train

    rows, runs = [], {}
    for name, change in VARIANTS.items():
        cfg = replace(base, run_dir=str(out / slug(name)), **change)
        source = "macenko" if cfg.stain_norm else "whole" if cfg.feature_crops == (1.0,) \
            else "centre half" if cfg.feature_crops == (0.5,) else "whole + centre half"
        if any(p not in passes for p in source.split(" + ")):
            print(f"{name}: skipped (pass {source} not extracted)")
            continue
        derive(cfg, data, passes)
        start = time.perf_counter()
        runs[name] = train.train(cfg, data, folds, splitter)
        extraction = sum(pass_seconds[p] for p in source.split(" + "))
        rows.append(row(name, runs[name].cv, time.perf_counter() - start,
                        n_features=runs[name].config["details"]["n_features"],
                        extraction_s=extraction, peak_rss_gb=peak_rss_gb(),
                        moved=moved(runs[name].cv, runs["ridge"].cv)))
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    return rows, runs


def run_blends(base: TrainConfig, data, runs: dict, best: str, out: Path, folds: np.ndarray,
               splitter: str) -> list:
    """07 blends: today's three runs, with the best variant added, and the three recipes on
    the best variant's features."""
    from utils import train
    from utils.runs import load_run

    today = [load_run(RECIPES / name) for name in ("ridge", "ridge_TARGET-pca16", "retrieval")]
    change = VARIANTS[best]
    extra = [train.train(replace(base, run_dir=str(out / f"{slug(best)}_{tag}"), **change,
                                 **more), data, folds, splitter)
             for tag, more in (("TARGET-pca16", {"target_pca": 16}),
                               ("retrieval", {"recipe": "retrieval"}))]
    rows = [row(f"{best}, {tag}", run.cv, run.config["elapsed_s"],
                moved=moved(run.cv, runs["ridge"].cv))
            for tag, run in zip(("TARGET=pca:16", "RECIPE=retrieval"), extra)]
    for label, members in (("ridge + pca:16 + retrieval (today)", today),
                           (f"today's three + {best}", [*today, runs[best]]),
                           (f"ridge + pca:16 + retrieval on {best}", [runs[best], *extra])):
        start = time.perf_counter()
        cv, final = blend(data.y, folds, splitter, members)
        rows.append(row(f"07 blend {label} (nested)", cv, time.perf_counter() - start,
                        moved=moved(cv, runs["ridge"].cv)))
        rows.append(row(f"07 submitted ({final['kept']})", final["cv"], 0.0))
    return rows


def run_unseen(base: TrainConfig, data, names: list[str], out: Path) -> pd.DataFrame:
    """her2st_unseen.py's protocol on the cached features: for each section, ridge (nested
    alphas over the other three sections as folds) and 07's blend of ridge, pca:16 and
    retrieval on those features, trained on three sections and scored on the fourth."""
    from utils import train
    from utils.features import cached_features
    from utils.runs import Run

    sections = pd.read_csv(HER2ST / "train_sections.csv", dtype=str).set_index("ID")
    section = sections.loc[data.train["ID"], "section"].to_numpy()
    rows = []
    for name in names:
        cfg = replace(base, **VARIANTS[name])
        x = cached_features(data, cfg.feature_spec)["train"]
        for held in sorted(set(section)):
            keep, test = section != held, section == held
            folds = pd.factorize(section[keep])[0]
            y = data.y[keep]
            fits = {"ridge": train.cv_ridge(x[keep], y, x[test], folds, cfg.alphas),
                    "pca:16": train.cv_ridge(x[keep], y, x[test], folds, cfg.alphas,
                                             target_dim=16),
                    "retrieval": train.cv_retrieval(x[keep], y, x[test], folds,
                                                    cfg.n_nearest, cfg.temperatures)}
            members = [Run(Path(k), {}, fit.cv, folds, fit.oof, fit.test_pred)
                       for k, fit in fits.items()]
            _, final = blend(y, folds, "slices", members)
            for label, cv, pred, kept in (
                    ("ridge", fits["ridge"].cv, fits["ridge"].test_pred, "ridge"),
                    ("ridge pca:16", fits["pca:16"].cv, fits["pca:16"].test_pred, "pca:16"),
                    ("07 blend", final["cv"], final["test_pred"], final["kept"])):
                unseen = score(data.y[test], pred)
                rows.append({"features": name, "held out": held, "model": label, "kept": kept,
                             "cv mean": cv["overall"]["score"], "unseen": unseen["score"],
                             **{f"unseen {k}": unseen[k] for k in KEYS[1:5]}})
                print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "unseen_table.csv", index=False)
    return table


def run_table(base: TrainConfig, data, passes: dict, pass_seconds: dict, out: Path,
              unseen: list[str] | None) -> None:
    """Every variant, the blends and the unseen check; tables printed and saved under out."""
    from utils import train

    folds, splitter = train.make_cv_folds(base, data)
    rows, runs = run_variants(base, data, passes, pass_seconds, out, folds, splitter)
    ranked = sorted((r for r in rows if r["variant"] != "ridge" and "TARGET" not in r["variant"]),
                    key=lambda r: -r["score"])  # the best features (ridge on genes)
    best = ranked[0]["variant"]
    rows += run_blends(base, data, runs, best, out, folds, splitter)
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False), flush=True)
    table.to_csv(out / "features_table.csv", index=False)
    names = unseen or ["ridge", *[r["variant"] for r in ranked[:2]]]
    held = run_unseen(base, data, names, out)
    summary = held.groupby(["features", "model"], sort=False)[["unseen", "cv mean"]].mean()
    print("\n" + held.round(4).to_string(index=False) + "\n\nmean over sections\n" +
          summary.round(4).to_string(), flush=True)
    print(f"peak RSS {peak_rss_gb()} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/features")
    parser.add_argument("--only-extract", action="store_true")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    parser.add_argument("--unseen", nargs="*", help="variants for the unseen check (default: "
                        "ridge and the two best)")
    args = parser.parse_args()
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    out = kit_root() / args.out
    os.environ.setdefault("KIT_CACHE_DIR", str(RECIPES / "cache"))  # today's features reused
    data = load_data(HER2ST)
    base = base_config(HER2ST, out / "ridge")
    passes, pass_seconds = extract_passes(base, data, args.passes)
    if "whole" in passes:
        print(f"embedding columns vs today's features: max |diff| "
              f"{check_default(passes, base, data)}")
    if args.only_extract:
        return
    run_table(base, data, passes, pass_seconds, out, args.unseen)


if __name__ == "__main__":
    main()
