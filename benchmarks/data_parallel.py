"""Data-parallel fine-tuning: the same run with DEVICES=1 and DEVICES=N (same global batch) on
the demo set; prints wall time, training images/s, peak GPU memory and how far the two runs'
OOF/test predictions and CV scores are apart. On CPU the N processes are gloo processes sharing
the cores (a correctness check, not a speed-up); on a machine with N GPUs it measures the real
scaling (NCCL, mixed precision as the kit picks it).

    .venv/bin/python -m benchmarks.data_parallel [--devices 2] [--backbone test_efficientnet]
        [--img-size 64] [--batch 16] [--epochs 2]
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from utils.config import TrainConfig
from utils.data import load_data, load_images
from utils.dev.demo import write_demo
from utils.files import read_json
from utils.places import kit_root
from utils.train import make_cv_folds, train


def summary(run, seconds: float) -> dict:
    """Wall time, images/s, memory and CV of a finished run."""
    history = read_json(run.path / "history.json")
    speeds = [r["images_per_s"] for r in history if "images_per_s" in r]
    memory = [r["gpu_memory_gb"] for r in history if r.get("gpu_memory_gb") is not None]
    return {"wall_s": seconds, "images_per_s": float(np.mean(speeds)),
            "gpu_gb": max(memory) if memory else None, "cv": run.cv["overall"]["score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/data_parallel")
    args = parser.parse_args()
    out = kit_root() / args.out
    data_dir = write_demo(out / "data", n_train=240, n_test=80, n_genes=400, image_size=128)
    cfg = TrainConfig(data_dir=str(data_dir), recipe="finetune", backbone=args.backbone,
                      pretrained=False, img_size=args.img_size, epochs=args.epochs,
                      batch_size=args.batch, patience=None, tta=False, augment="none",
                      cv="blocks", n_folds=3, overwrite=True, resume=False)
    data = load_data(cfg.data_dir)
    folds, _ = make_cv_folds(cfg, data)
    load_images(data, "train"), load_images(data, "test")  # the image cache, outside the clock
    runs, rows = {}, {}
    for devices in (1, args.devices):
        start = time.perf_counter()
        runs[devices] = train(replace(cfg, run_dir=str(out / f"devices{devices}"),
                                      devices=devices), data, folds)
        rows[devices] = summary(runs[devices], time.perf_counter() - start)
    print(f"{args.backbone} at {args.img_size} px, global batch {args.batch}, "
          f"{args.epochs} epochs × 3 folds, {len(data.train)} train patches")
    print(f"{'devices':>8} {'wall s':>8} {'img/s':>8} {'GPU GB':>7} {'CV':>8}")
    for devices, row in rows.items():
        gpu = "-" if row["gpu_gb"] is None else f"{row['gpu_gb']:.2f}"
        print(f"{devices:>8} {row['wall_s']:>8.1f} {row['images_per_s']:>8.1f} {gpu:>7} "
              f"{row['cv']:>8.4f}")
    one, many = runs[1], runs[args.devices]
    print(f"max |OOF difference| {np.abs(one.oof - many.oof).max():.2e}, max |test difference| "
          f"{np.abs(one.test_pred - many.test_pred).max():.2e}, CV difference "
          f"{abs(one.cv['overall']['score'] - many.cv['overall']['score']):.2e}")
    print(f"runs in {Path(args.out)}")


if __name__ == "__main__":
    main()
