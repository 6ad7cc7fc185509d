"""Ridge, retrieval and a 1-epoch fine-tune on ../shared/her2st, every metric part: run it before
and after a refactoring that must not change behaviour, and compare the two JSON files.

lite0 ImageNet weights from the shared file, 224 px, CV = "slices" (the 4 sections), default
parameters otherwise (fine-tuning: 1 epoch, no early stopping). Each recipe is one 05 run folder
under --out; the features are computed in --out/cache (never another branch's cache).

    .venv/bin/python -m benchmarks.her2st_equivalence --out runs/her2st/before
    .venv/bin/python -m benchmarks.her2st_equivalence --out runs/her2st/after \
        --compare runs/her2st/before/scores.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from utils.places import kit_root

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
RECIPES = {"ridge": {}, "retrieval": {}, "finetune": {"epochs": 1, "patience": None}}


def run_recipes(out) -> dict:
    """Each recipe's CV report (mean over folds, range, pooled OOF) and wall time."""
    from utils import train
    from utils.config import TrainConfig
    from utils.data import load_data

    data = load_data(HER2ST)
    scores = {}
    for recipe, change in RECIPES.items():
        cfg = TrainConfig(data_dir=str(HER2ST), run_dir=str(out / recipe), recipe=recipe,
                          backbone="tf_efficientnet_lite0", pretrained=str(WEIGHTS),
                          img_size=224, cv="slices", **change)
        folds, splitter = train.make_cv_folds(cfg, data)
        start = time.perf_counter()
        run = train.train(cfg, data, folds, splitter)
        scores[recipe] = {"overall": run.cv["overall"], "oof": run.cv["oof"],
                          "folds": [f["score"] for f in run.cv["folds"]],
                          "seconds": round(time.perf_counter() - start, 1),
                          "oof_sum": float(np.asarray(run.oof, np.float64).sum())}
        print(recipe, json.dumps(scores[recipe]["overall"]), flush=True)
    return scores


def compare(now: dict, before: dict) -> bool:
    """Print every part of both and whether they agree to 4 decimals."""
    same = True
    for recipe in now:
        for part in ("overall", "oof"):
            a, b = before[recipe][part], now[recipe][part]
            diff = {k: round(abs(a[k] - b[k]), 6) for k in a}
            ok = all(round(a[k], 4) == round(b[k], 4) for k in a)
            same &= ok
            print(f"{recipe:9} {part:7} before {a['score']:.4f} after {b['score']:.4f} "
                  f"max |diff| {max(diff.values()):.2e} {'same' if ok else 'DIFFERENT'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/equivalence")
    parser.add_argument("--compare", default=None, help="scores.json of an earlier run")
    args = parser.parse_args()
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    out = kit_root() / args.out
    os.environ["KIT_CACHE_DIR"] = str(out / "cache")
    scores = run_recipes(out)
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    print(json.dumps({r: s["overall"] for r, s in scores.items()}, indent=1))
    if args.compare:
        same = compare(scores, json.loads((kit_root() / args.compare).read_text()))
        raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
