"""Does the input pipeline keep up? Loader images/s alone (cached uint8 patches + AUGMENT, per
worker count) against training images/s of a model (forward + backward + AdamW), on this
machine's device. The loader must be several times faster than training, or the GPU waits.

    .venv/bin/python -m benchmarks.loader_speed [--data ../shared/her2st] [--backbone test_convnext]
        [--img-size 224] [--batch-size 32] [--augment flips] [--workers 0 2] [--threads 1]

Without --data it uses ../shared/her2st if present, else writes a small demo set to a temporary
folder. Prints one line per measurement; nothing is timed in tests.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utils.augment import build_augment
from utils.data import PatchDataset, load_data, load_images
from utils.loop import (
    Stepper,
    default_device,
    grad_scaler,
    make_loader,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from utils.losses import create_loss
from utils.models import ModelSpec, build_model, set_targets
from utils.places import kit_root

SHARED_HER2ST = kit_root().parent / "shared" / "her2st"


def loader_speed(dataset: PatchDataset, batch_size: int, workers: int, batches: int,
                 device: torch.device) -> float:
    """Images/s of iterating the training loader alone (batches moved to the device)."""
    loader = make_loader(dataset, batch_size, 0, workers, device)
    n, start = 0, None
    for i, (x, _) in enumerate(loader):
        x.to(device)
        if i == 0:  # worker start-up is paid once per epoch; time the steady state
            start = time.perf_counter()
        else:
            n += len(x)
        if i == batches:
            break
    return n / (time.perf_counter() - start)


def train_speed(dataset: PatchDataset, y: np.ndarray, backbone: str, img_size: int,
                batch_size: int, batches: int, device: torch.device) -> float:
    """Training images/s (forward, loss, backward, AdamW step) over `batches` batches."""
    model = build_model(ModelSpec(backbone, img_size, list(range(y.shape[1])),
                                  {"all": list(range(y.shape[1]))}), pretrained=False)
    set_targets(model, y)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    optimizer = make_optimizer(model, 1e-4, 1e-3, 0.01)
    loss = create_loss({"mse": 0.5, "pearson": 0.3, "covariance": 0.2})
    step = Stepper(model, loss, optimizer, make_scheduler(optimizer, 1, 100), grad_scaler(device),
                   None, device, 1.0, 1)
    subset = PatchDataset(dataset.images, dataset.targets,
                          dataset.indices[:batch_size * (batches + 1)], dataset.transform)
    warm = PatchDataset(dataset.images, dataset.targets, dataset.indices[:batch_size],
                        dataset.transform)
    train_epoch(step, make_loader(warm, batch_size, 0, 0, device), "warm-up")
    return train_epoch(step, make_loader(subset, batch_size, 1, 0, device), "train")[
        "images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="DACON-layout folder")
    parser.add_argument("--backbone", default="test_convnext")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="flips")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or (SHARED_HER2ST if SHARED_HER2ST.is_dir() else None)
        if data_dir is None:
            from utils.dev.demo import write_demo

            os.environ["KIT_CACHE_DIR"] = tmp
            data_dir = write_demo(Path(tmp) / "demo", n_train=600, n_test=20, n_genes=500)
        data = load_data(data_dir)
        images = load_images(data, "train")
        dataset = PatchDataset(images, data.y, None, build_augment(args.augment))
        device = default_device()
        print(f"data {data.root}: {len(images)} patches {images.shape[1:]}, AUGMENT="
              f"{args.augment!r}, batch {args.batch_size}, device {device}, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
        for workers in args.workers:
            speed = loader_speed(dataset, args.batch_size, workers, args.batches, device)
            print(f"loader alone, {workers} workers: {speed:8.0f} images/s")
        speed = train_speed(dataset, data.y, args.backbone, args.img_size, args.batch_size,
                            args.batches, device)
        print(f"training {args.backbone} at {args.img_size} px: {speed:8.1f} images/s")


if __name__ == "__main__":
    main()
