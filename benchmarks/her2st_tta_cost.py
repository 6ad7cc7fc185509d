"""What TTA buys `cpu_best` on held-out her2st sections, and what it costs (issue 26).

`cpu_best` extracts 16 forward passes per patch (8 D4 views × 2 crops), 29 of its 32 minutes at
DACON scale. This measures the same recipe (lite0 at 224 from the shared weights,
FEATURE_STAGES "all", FEATURE_CROPS [1.0, 0.5], ridge on the top 16 target PCs, alpha by
nested slice CV) with D4 TTA (8 views), TTA="flips" (4) and none: each her2st section held
out in turn, alpha chosen on the other three (the kit's `cv_ridge` with one fold per section),
every metric part on the held-out section, and the extraction seconds of each feature set.

    .venv/bin/python -m benchmarks.her2st_tta_cost [--out runs/her2st/tta_cost]

Features are cached under `<out>` (`<name>.npy`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from utils.config import FeatureSpec
from utils.data import load_data, load_images
from utils.files import cached_array, read_json, write_json
from utils.metric import KEYS, score
from utils.places import kit_root, resolve

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)  # cpu_best's
VARIANTS = {"cpu_best (D4 TTA, 16 passes)": True, "TTA flips (8 passes)": "flips",
            "no TTA (2 passes)": False}


def load_sections():
    """her2st's data, each train row's section (benchmark-only metadata) and its patches; exits
    with a message when ../shared/her2st or the lite0 weights are absent."""
    if not HER2ST.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {HER2ST} and {WEIGHTS}")
    data = load_data(HER2ST)
    meta = pd.read_csv(HER2ST / "train_sections.csv", dtype=str).set_index("ID")
    return data, meta.loc[data.train["ID"], "section"].to_numpy(), load_images(data, "train")


def features(images: np.ndarray, tta: bool | str, out) -> tuple[np.ndarray, float]:
    """cpu_best's features of every patch, with or without TTA, and the seconds their
    extraction took (kept beside the cached array, so a rerun reports the first run's time)."""
    from utils.features import extract_features
    from utils.models import create_backbone

    spec = FeatureSpec("tf_efficientnet_lite0", str(WEIGHTS), 224, tta, stages="all",
                       crops=(1.0, 0.5))
    timing = resolve(out) / f"{spec.tag}_seconds.json"

    def compute() -> np.ndarray:
        start = time.perf_counter()
        model = create_backbone(spec.backbone, spec.pretrained, spec.img_size)
        x = extract_features(model, images, spec)
        write_json(timing, {"seconds": time.perf_counter() - start})
        return x

    x = cached_array(resolve(out) / f"{spec.tag}.npy", spec.cache_key(str(len(images))), compute)
    return x, read_json(timing)["seconds"] if timing.is_file() else float("nan")


def held_out_rows(x: np.ndarray, y: np.ndarray, sections: np.ndarray, name: str) -> list[dict]:
    """Each section held out: ridge (pca:16 targets) with alpha by slice CV on the others."""
    from utils.train import cv_ridge

    rows = []
    for held in sorted(set(sections)):
        fit, test = sections != held, sections == held
        folds = pd.factorize(sections[fit])[0]
        result = cv_ridge(x[fit], y[fit], x[test], folds, ALPHAS, None, "slices", 16)
        rows.append({"features": name, "section": held, "alpha": result.alpha,
                     **score(y[test], result.test_pred)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/tta_cost")
    args = parser.parse_args(argv)
    data, sections, images = load_sections()
    rows, seconds = [], {}
    for name, tta in VARIANTS.items():
        x, seconds[name] = features(images, tta, args.out)
        rows += held_out_rows(x, data.y, sections, name)
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    summary = table.groupby("features", sort=False)[list(KEYS)].mean()
    summary["extraction s (732 patches)"] = pd.Series(seconds).round(1)
    print("\nmean over the four held-out sections:")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
