"""Training-step overhead: the kit's `train_epoch` step time against the pure forward+backward
(and forward+backward+AdamW) time of the same model and batch. Target: step ≤ 1.1 × forward+
backward+optimizer. Runs on CPU with a small model; on a GPU the same script measures the
real thing (mixed precision as the kit picks it) and prints the peak memory.

    .venv/bin/python -m benchmarks.step_overhead [--backbone tf_efficientnet_lite0]
        [--img-size 128] [--batch 16] [--steps 12]
"""

import argparse
import time

import torch

from utils.loop import (
    Stepper,
    autocast,
    default_device,
    grad_scaler,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from utils.losses import create_loss
from utils.models import ModelSpec, build_model


def sync(device: torch.device) -> None:
    """Wait for the GPU so the clock sees its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pure_loop(step: Stepper, x: torch.Tensor, y: torch.Tensor, steps: int, optimize: bool) -> float:
    """Seconds per step of forward + loss + backward (+ AdamW step) on one resident batch."""
    step.model.train()
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync(step.device)
        start = time.perf_counter()
        with autocast(step.device):
            pred = step.model(x)
        loss, _ = step.loss_fn(pred.float(), y)
        step.scaler.scale(loss).backward()
        if optimize:
            step.scaler.step(step.optimizer)
            step.scaler.update()
        step.optimizer.zero_grad(set_to_none=True)
        sync(step.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--genes", type=int, default=250)
    args = parser.parse_args()
    device = default_device()
    spec = ModelSpec(args.backbone, args.img_size, list(range(args.genes)),
                     {"all": list(range(args.genes))})
    model = build_model(spec).to(device)
    optimizer = make_optimizer(model, 1e-4, 1e-4, 0.01)
    step = Stepper(model, create_loss({"mse": 0.3, "pearson": 0.6, "covariance": 0.1}), optimizer,
                   make_scheduler(optimizer, 0, 10 ** 6), grad_scaler(device), None, device,
                   1.0, 1)
    gen = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    images = torch.randint(0, 256, (n, 3, args.img_size, args.img_size), dtype=torch.uint8,
                           generator=gen)
    targets = torch.randn(n, args.genes, generator=gen)
    x, y = images[:args.batch].to(device), targets[:args.batch].to(device)
    fwd_bwd = pure_loop(step, x, y, args.steps, optimize=False)
    fwd_bwd_opt = pure_loop(step, x, y, args.steps, optimize=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets),
                                         batch_size=args.batch, shuffle=True,
                                         pin_memory=device.type == "cuda")
    train_epoch(step, loader, "warm-up")
    stats = train_epoch(step, loader, "measured")
    kit = args.batch / stats["images_per_s"]
    print(f"device {device}, {args.backbone} at {args.img_size} px, batch {args.batch}, "
          f"{args.steps} steps")
    print(f"pure forward+backward:        {fwd_bwd * 1e3:7.1f} ms/step")
    print(f"pure forward+backward+AdamW:  {fwd_bwd_opt * 1e3:7.1f} ms/step")
    print(f"kit train_epoch step:         {kit * 1e3:7.1f} ms/step  "
          f"= {kit / fwd_bwd:.2f} x forward+backward, {kit / fwd_bwd_opt:.2f} x with AdamW "
          f"(target <= 1.1)")
    memory = stats["gpu_memory_gb"]
    print(f"train_epoch: {stats['images_per_s']:.1f} img/s overall, loader "
          f"{stats['loader_images_per_s']:.0f} img/s, model {stats['model_images_per_s']:.1f} "
          f"img/s" + ("" if memory is None else f", peak GPU memory {memory:.2f} GB"))


if __name__ == "__main__":
    main()
