"""Self-supervised adaptation (04) on ../shared/her2st, judged by the kit's ridge linear probe
with the honest CV (slices), one row per view recipe against the same backbone's ImageNet weights.

Every adaptation starts lite0 from the shared ImageNet weights and trains on the 910 train + test
patches (labels never read) with a fixed number of epochs (set before any score is seen, so the
CV stays honest); the probe is 05's ridge recipe at 224 px with D4 TTA and the default alphas,
exactly as benchmarks/her2st_recipes.py runs it. Each recipe writes `rows/<recipe>.json`; run
one recipe per process so that peak RSS is that recipe's, then print the table:

    .venv/bin/python -m benchmarks.her2st_ssl --recipes imagenet flips flips+color
    .venv/bin/python -m benchmarks.her2st_ssl --table
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from utils.config import AdaptConfig, TrainConfig
from utils.data import load_data
from utils.files import read_json, write_json
from utils.metric import PARTS
from utils.places import kit_root
from utils.runs import peak_rss_gb

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
RECIPES = {  # row name → VIEWS of 04 ("imagenet": no adaptation, the baseline)
    "imagenet": None,
    "flips": "flips",
    "flips+color": "flips+color",
    "flips+hed": "flips+hed",
    "flips+crop": "flips+crop",
    "flips+blur+crop": "flips+blur+crop",
    "flips+color+hed+blur+crop": "flips+color+hed+blur+crop",
}


def probe(out: Path, name: str, pretrained: str, data, folds, splitter) -> dict:
    """05's ridge recipe (slice CV, nested alphas, D4 TTA at 224 px) on the given weights."""
    from utils import train

    cfg = TrainConfig(data_dir=str(HER2ST), run_dir=str(out / f"ridge_{slug(name)}"),
                      recipe="ridge", backbone="tf_efficientnet_lite0", pretrained=pretrained,
                      img_size=224, cv="slices")
    start = time.perf_counter()
    cv = train.train(cfg, data, folds, splitter).cv
    return {"cv_mean": cv["overall"]["score"], "fold_min": cv["min"]["score"],
            "fold_max": cv["max"]["score"], "oof": cv["oof"]["score"],
            **{k: cv["overall"][k] for k in PARTS}, "probe_s": round(time.perf_counter() - start)}


def slug(name: str) -> str:
    """A folder name for a recipe."""
    return name.replace("+", "_")


def agreement(pretrained: str, images, views: str) -> dict:
    """Positive-vs-negative cosine gap and top-1 view retrieval of pooled features (128 px)."""
    from utils.adapt import view_agreement
    from utils.models import create_backbone

    model = create_backbone("tf_efficientnet_lite0", pretrained, 128)
    scores = view_agreement(model, images, views, 128, seed=1)
    return {"gap": scores["gap"], "top1": scores["top1"]}


def run_recipe(name: str, args, out: Path) -> dict:
    """Adapt (unless the baseline), probe, and keep the row in rows/<recipe>.json."""
    from utils import adapt, train

    data = load_data(HER2ST)
    folds, splitter = train.make_cv_folds(TrainConfig(data_dir=str(HER2ST)), data)
    arrays = adapt.load_unlabelled(data, ("train", "test"))
    probe_set = adapt.probe_images(arrays, 256, seed=1)
    views, weights, seconds, history = RECIPES[name], str(WEIGHTS), 0.0, []
    if views is not None:
        cfg = AdaptConfig(data_dir=str(HER2ST), run_dir=str(out / f"adapt_{slug(name)}"),
                          backbone="tf_efficientnet_lite0", pretrained=str(WEIGHTS),
                          objective=args.objective, views=views, img_size=args.img_size,
                          epochs=args.epochs, batch_size=args.batch_size)
        done = adapt.adapt(cfg, arrays)
        weights, seconds, history = str(done.weights), done.seconds, done.history
    row = {"recipe": name, "objective": None if views is None else args.objective,
           **probe(out, name, weights, data, folds, splitter),
           **agreement(weights, probe_set, "flips+color+hed+blur+crop"),
           "adapt_s": round(seconds), "loss_first": history[0]["loss"] if history else None,
           "loss_last": history[-1]["loss"] if history else None, "peak_rss_gb": peak_rss_gb()}
    write_json(out / "rows" / f"{slug(name)}.json", row)
    return row


def table(out: Path) -> pd.DataFrame:
    """Every finished row, in RECIPES order."""
    rows = {p.stem: read_json(p) for p in (out / "rows").glob("*.json")}
    return pd.DataFrame([rows[slug(n)] for n in RECIPES if slug(n) in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/ssl")
    parser.add_argument("--recipes", nargs="*", default=[], choices=list(RECIPES))
    parser.add_argument("--table", action="store_true", help="print the table of finished rows")
    parser.add_argument("--objective", default="simclr")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    out = Path(args.out) if Path(args.out).is_absolute() else kit_root() / args.out
    os.environ.setdefault("KIT_CACHE_DIR", str(out / "cache"))
    for name in args.recipes:
        print(pd.DataFrame([run_recipe(name, args, out)]).round(4).to_string(index=False),
              flush=True)
    if args.table or not args.recipes:
        print(table(out).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
