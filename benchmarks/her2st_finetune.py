"""Fine-tuning vs the frozen-feature ridge run on ../shared/her2st, on the same block folds:
every metric part (mean over folds and pooled OOF), per-fold scores, wall time and peak RSS.

    .venv/bin/python -m benchmarks.her2st_finetune [--run runs/her2st/finetune_lite0]
        [--ridge runs/her2st/ridge_lite0_blocks] [--epochs 3] [--lr 2e-4] [--head-lr 2e-4]
        [--loss mse=0.3 pearson=0.6 covariance=0.1] [--freeze 2] [--head-init ridge]
        [--ema 0.9] [--threads 1]

The ridge run comes from `benchmarks/her2st_ridge.py` (or 05_train with RECIPE="ridge",
tf_efficientnet_lite0 from the weights file, IMG_SIZE=224, CV="blocks", 4 folds). An interrupted
fine-tuning run resumes from its checkpoints when started again with the same arguments.
"""

import argparse
import time

import numpy as np

from utils import train
from utils.config import TrainConfig
from utils.data import load_data
from utils.metric import KEYS
from utils.places import kit_root
from utils.runs import load_run

SHARED = kit_root().parent / "shared"


def parse_args() -> argparse.Namespace:
    """Command-line options: the fine-tuning knobs tried on her2st."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/her2st/finetune_lite0")
    parser.add_argument("--ridge", default="runs/her2st/ridge_lite0_blocks")
    parser.add_argument("--weights", default=str(SHARED / "weights" /
                                                 "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--head-lr", type=float, default=2e-4)
    parser.add_argument("--loss", nargs="+", default=["mse=0.3", "pearson=0.6", "covariance=0.1"],
                        help="LOSS as term=weight pairs")
    parser.add_argument("--freeze", type=int, default=2)
    parser.add_argument("--head-init", default="ridge")
    parser.add_argument("--ema", type=float, default=None)
    parser.add_argument("--augment", default="flips")
    parser.add_argument("--target-pca", type=int, default=None)
    parser.add_argument("--no-tta", action="store_true", help="predict without D4 TTA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="retrain a finished run")
    return parser.parse_args()


def print_comparison(ridge, run) -> None:
    """Every metric part of both runs (fold mean and OOF), per-fold scores, time, memory."""
    print(f"{'':24}" + "".join(f"{k:>10}" for k in KEYS))
    for name, r in (("ridge", ridge), ("finetune", run)):
        for label, parts in (("mean over folds", r.cv["overall"]), ("OOF", r.cv["oof"])):
            print(f"{name + ' ' + label:<24}" + "".join(f"{parts[k]:>10.4f}" for k in KEYS))
    for name, r in (("ridge", ridge), ("finetune", run)):
        folds = " ".join(f"{f['score']:.4f}" for f in r.cv["folds"])
        print(f"{name:<9} per-fold score: {folds}; wall {r.config['elapsed_s']} s, "
              f"peak RSS {r.config['peak_rss_gb']} GB")
    units = run.config["details"]["units"]
    print("finetune epochs per fold (0 = ridge-initialised start): " + ", ".join(
        f"{k} OOF epoch {v['oof_epoch']} (nested), test epoch {v['test_epoch']}, own best "
        f"{v['best_epoch_on_fold']} ({v['best_score_on_fold']:.4f}, optimistic)"
        for k, v in units.items()))
    print(f"training speed {run.config['details']['train_images_per_s']} images/s")


def main() -> None:
    args = parse_args()
    data_dir = SHARED / "her2st"
    if not data_dir.is_dir():
        raise SystemExit(f"{data_dir} is absent: this benchmark needs ../shared/her2st")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ridge = load_run(args.ridge)
    loss = {term: float(w) for term, w in (pair.split("=") for pair in args.loss)}
    cfg = TrainConfig(data_dir=str(data_dir), run_dir=args.run, recipe="finetune",
                      backbone="tf_efficientnet_lite0", pretrained=args.weights, img_size=224,
                      cv="blocks", n_folds=4, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, head_lr=args.head_lr, loss=loss,
                      freeze=args.freeze, head_init=args.head_init, ema=args.ema,
                      augment=args.augment, target_pca=args.target_pca, tta=not args.no_tta,
                      patience=None, overwrite=args.overwrite)
    data = load_data(cfg.data_dir)
    folds, splitter = train.make_cv_folds(cfg, data)
    if not np.array_equal(folds, ridge.folds):
        raise SystemExit(f"{ridge.path} was cross-validated on other folds; rerun it with "
                         "CV='blocks', N_FOLDS=4")
    start = time.perf_counter()
    run = train.train(cfg, data, folds)
    print(f"\n{run.path}: {time.perf_counter() - start:.0f} s in this process")
    print_comparison(ridge, run)


if __name__ == "__main__":
    main()
