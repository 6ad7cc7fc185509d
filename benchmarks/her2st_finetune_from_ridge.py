"""Fine-tuning that starts where `cpu_best` ends, on a held-out her2st section (issue 26).

For each section held out in turn, one lite0 model is trained on the other three sections with
`cpu_best`'s feature set (FEATURE_STAGES="all", FEATURE_CROPS=[1.0, 0.5], TARGET_PCA=16): its
heads start from the ridge fit on those features (D4-averaged, alpha by inner block CV on the
training rows), so epoch 0 is the ridge model, and 1–3 epochs of fine-tuning follow
(FREEZE=2 and 05's other defaults, no early stopping). After every epoch the held-out section
is scored with D4 TTA, every metric part. The curve only reports: no epoch is chosen on it (a
05 run chooses on its CV folds; if no epoch beats epoch 0 on held-out sections, none should be
trusted to).

    .venv/bin/python -m benchmarks.her2st_finetune_from_ridge [--sections C2 C3 C4 C5]
        [--epochs 3] [--freeze 2] [--lr 2e-4] [--head-lr 2e-4] [--out runs/her2st/ft_from_ridge]

Resumable: a finished section is read back from `<out>/<section>/curve.json`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from benchmarks.her2st_tta_cost import WEIGHTS, load_sections
from utils.config import TrainConfig
from utils.files import read_json, write_json
from utils.metric import KEYS, score
from utils.places import resolve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--freeze", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--head-lr", type=float, default=2e-4)
    parser.add_argument("--out", default="runs/her2st/ft_from_ridge")
    return parser.parse_args(argv)


def section_curve(args: argparse.Namespace, data, images: np.ndarray, sections: np.ndarray,
                  held_out: str) -> list[dict]:
    """Train on the other sections from the ridge start; every part on `held_out` per epoch."""
    from utils.models import build_model, load_weights
    from utils.train import train_unit
    from utils.units import Unit, epoch_weights, predict, to_original, unit_spec

    folder = resolve(args.out) / held_out
    if (folder / "curve.json").is_file():
        return read_json(folder / "curve.json")
    cfg = TrainConfig(recipe="finetune", backbone="tf_efficientnet_lite0",
                      pretrained=str(WEIGHTS), img_size=224, feature_stages="all",
                      feature_crops=[1.0, 0.5], target_pca=16, tta=True, epochs=args.epochs,
                      freeze=args.freeze, lr=args.lr, head_lr=args.head_lr, patience=None,
                      batch_size=16)
    genes = np.arange(len(data.genes))
    unit = Unit(f"held-out-{held_out}", 0, 0, np.flatnonzero(sections != held_out),
                np.flatnonzero(sections == held_out), genes, {"all": genes})
    start = time.perf_counter()
    history = train_unit(unit, cfg, images, data.y, folder, args.epochs)
    trained = time.perf_counter() - start
    model = build_model(unit_spec(unit, cfg), pretrained=False)
    truth = data.y[unit.val_idx]
    curve = []
    for row in history:
        load_weights(model, epoch_weights(folder, row["epoch"]))
        pred = to_original(model, predict(model, images, unit.val_idx, tta=True))
        curve.append({"section": held_out, "epoch": row["epoch"], **score(truth, pred),
                      "no_tta_score": row["val_score"], "train_s": round(trained)})
    write_json(folder / "curve.json", curve)
    return curve


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data, sections, images = load_sections()
    rows = [r for s in args.sections for r in section_curve(args, data, images, sections, s)]
    table = pd.DataFrame(rows)
    print(table[["section", "epoch", *KEYS, "no_tta_score", "train_s"]].round(4)
          .to_string(index=False))
    print("\nmean over held-out sections, per epoch (epoch 0 = the ridge start):")
    print(table.groupby("epoch")[list(KEYS)].mean().round(4).to_string())


if __name__ == "__main__":
    main()
