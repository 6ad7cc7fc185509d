"""Frozen-feature recipes on ../shared/her2st with the kit's honest CV (slices, nested choices):
ridge, ridge on target principal components, retrieval, and 07's nested blends of them.

Every row: lite0 ImageNet weights from the shared file, 224 px, D4 TTA features (computed once,
cached), CV = "slices" (the 4 sections). Each variant is one 05 run folder; the blends are what
07 computes from those folders (nested weights, then the nested keep-the-best rule).

    .venv/bin/python -m benchmarks.her2st_recipes [--out runs/her2st/recipes]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from utils import ensemble
from utils.config import TrainConfig
from utils.data import load_data
from utils.metric import KEYS
from utils.places import kit_root
from utils.runs import peak_rss_gb

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
VARIANTS = {  # name → TrainConfig changes
    "ridge": {},
    "ridge, TARGET=pca:16": {"target_pca": 16},
    "ridge, TARGET=pca:64": {"target_pca": 64},
    "ridge, PCA_DIM=256": {"pca_dim": 256},
    "retrieval": {"recipe": "retrieval"},
}


def row(name: str, cv: dict, seconds: float) -> dict:
    """One table row: CV mean, range and pooled OOF, every part."""
    return {"variant": name, **{k: cv["overall"][k] for k in KEYS},
            "min": cv["min"]["score"] if "min" in cv else np.nan,
            "max": cv["max"]["score"] if "max" in cv else np.nan,
            "oof": cv["oof"]["score"], "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/recipes")
    args = parser.parse_args()
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    from utils import train

    out = kit_root() / args.out
    os.environ.setdefault("KIT_CACHE_DIR", str(out / "cache"))
    data = load_data(HER2ST)
    base = TrainConfig(data_dir=str(HER2ST), recipe="ridge", backbone="tf_efficientnet_lite0",
                       pretrained=str(WEIGHTS), img_size=224, cv="slices")
    folds, splitter = train.make_cv_folds(base, data)
    rows, runs = [], {}
    for name, change in VARIANTS.items():
        slug = name.replace(", ", "_").replace("=", "-").replace(":", "")
        cfg = replace(base, run_dir=str(out / slug), **change)
        start = time.perf_counter()
        runs[name] = train.train(cfg, data, folds, splitter)
        rows.append(row(name, runs[name].cv, time.perf_counter() - start))
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    for members in (("ridge", "retrieval"), ("ridge", "ridge, TARGET=pca:16", "retrieval")):
        chosen = [runs[m] for m in members]
        oof, test = ensemble.stack_predictions(chosen)
        start = time.perf_counter()
        sets, names, _ = ensemble.blend_sets("global", data.genes, data.y, folds)
        blended = ensemble.cv_blend(data.y, oof, test, folds, "global", sets, names,
                                    (0.0, 0.25, 0.5, 0.75, 1.0), splitter)
        post = ensemble.cv_postprocess(data.y, blended.oof, blended.test_pred, folds,
                                       ("shrink_to_mean", "clip"), blended.cv, splitter)
        final = ensemble.keep_best(data.y, folds, splitter, blended, post, chosen)
        label = " + ".join(members)
        rows.append(row(f"07 blend {label} (nested)", post.cv if post.steps else blended.cv,
                        time.perf_counter() - start))
        rows.append(row(f"07 submitted from {label} ({final['kept']})", final["cv"], 0.0))
        print(final["note"], "; weights", blended.weights.ravel().round(3).tolist(), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    print(f"peak RSS {peak_rss_gb()} GB")
    table.to_csv(out / "recipes_table.csv", index=False)


if __name__ == "__main__":
    main()
