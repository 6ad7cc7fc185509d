"""Training building blocks for fine-tuning: seeded loaders, AdamW, warmup + cosine, one epoch
with mixed precision, gradient accumulation, clipping and EMA, and D4-TTA prediction.

Mixed precision follows `utils.backbones.amp_dtype` (bf16 on Ampere+, fp16 with loss scaling on
T4/P100, off on CPU). `utils.units` puts these together for one model with checkpoints.

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.backbones import autocast, d4_views, inference_batch_size


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, unit: int, epoch: int) -> int:
    """A well-mixed seed for one epoch of one unit: the same on a resumed run."""
    return int(np.random.SeedSequence([seed, unit, epoch]).generate_state(1)[0])


def train_batch_size(device: torch.device) -> int:
    """Default patches per training step: 32 on a GPU, 16 on CPU."""
    return 32 if device.type == "cuda" else 16


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes: NUM_WORKERS, else 0 on CPU (the model needs every core and
    the uint8 cache serves patches in microseconds) and up to 4 beside a GPU."""
    if num_workers is not None:
        return num_workers
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream, derived from the epoch seed."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2 ** 32)


def make_loader(dataset, batch_size: int, seed: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A shuffled training loader whose order and augmentations are fixed by `seed`."""
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)  # used as is with workers=0
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers,
        worker_init_fn=_seed_worker, pin_memory=device.type == "cuda",
        drop_last=len(dataset) > batch_size)  # no batch of one: batch norm needs two


def make_optimizer(model: nn.Module, lr: float, head_lr: float,
                   weight_decay: float) -> torch.optim.AdamW:
    """AdamW: backbone at `lr`, heads at `head_lr`; no weight decay on biases and norms."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = ("backbone" if name.startswith("backbone.") else "heads", param.ndim > 1)
            groups.setdefault(key, []).append(param)
    return torch.optim.AdamW([
        {"params": params, "lr": lr if part == "backbone" else head_lr,
         "weight_decay": weight_decay if decay else 0.0, "name": part}
        for (part, decay), params in sorted(groups.items())])


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then cosine decay to zero at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Stepper:
    """Everything one optimisation step needs."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    device: torch.device
    grad_clip: float | None
    accumulate: int


def train_epoch(step: Stepper, loader, desc: str = "train") -> dict[str, float]:
    """One pass over the loader; returns mean loss terms and training images/s."""
    from tqdm import tqdm

    step.model.train()
    sums, n_images, start = None, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, mininterval=2)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(step.device, non_blocking=True), y.to(step.device, non_blocking=True)
        with autocast(step.device):
            pred = step.model(x)
        loss, parts = step.loss_fn(pred.float(), y)
        step.scaler.scale(loss / step.accumulate).backward()
        if (i + 1) % step.accumulate == 0 or i + 1 == len(loader):
            _optimizer_step(step)
        values = torch.stack([loss.detach(), *parts.values()])
        sums = values * len(x) if sums is None else sums + values * len(x)
        n_images += len(x)
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    means = (sums / max(n_images, 1)).tolist() if sums is not None else [float("nan")] * 4
    means = [None if math.isnan(m) else m for m in means]  # a term with weight 0 → None
    return {"loss": means[0], **dict(zip(("mse", "pearson", "cov"), means[1:])),
            "images_per_s": n_images / (time.perf_counter() - start)}


def _optimizer_step(step: Stepper) -> None:
    """Unscale, clip, step, update the scaler, advance the schedule and the EMA."""
    if step.grad_clip:
        step.scaler.unscale_(step.optimizer)
        nn.utils.clip_grad_norm_(step.model.parameters(), step.grad_clip)
    step.scaler.step(step.optimizer)
    step.scaler.update()
    step.optimizer.zero_grad(set_to_none=True)
    step.scheduler.step()
    if step.ema is not None:
        step.ema.update(step.model, step=step.scheduler.last_epoch)


@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, indices: np.ndarray | None = None,
            tta: bool = False, device: torch.device | None = None,
            batch_size: int | None = None, features: bool = False) -> np.ndarray:
    """Model outputs (rows, outputs) for uint8 (N, H, W, 3) patches, averaged over D4 views;
    with `features`, the pooled backbone features (`model.forward_features`) instead."""
    device = device or next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        batch = np.asarray(images[indices[start:start + batch_size]])  # copy off the memmap
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
        with autocast(device):
            forward = model.forward_features if features else model
            views = [forward(v).float() for v in d4_views(x, tta)]
        out.append(torch.stack(views).mean(0).cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)


def oom_error(err: BaseException, batch_size: int, img_size: int | None, checkpoints: Path,
              resume: bool) -> RuntimeError:
    """A GPU out-of-memory error that says what to change and how to continue."""
    again = ("run the notebook again: RESUME=True continues from the last finished epoch "
             if resume else "set RESUME=True and run again to continue from the last epoch ")
    return RuntimeError(
        f"GPU out of memory with BATCH_SIZE={batch_size}, IMG_SIZE={img_size}: lower BATCH_SIZE "
        f"(e.g. {max(1, batch_size // 2)} with ACCUMULATE doubled keeps the effective batch), "
        f"lower IMG_SIZE or FREEZE the first backbone stages, then {again}(checkpoints in "
        f"{checkpoints}). Original error: {str(err).splitlines()[0] if str(err) else err!r}")


def is_oom(err: BaseException) -> bool:
    """Whether an exception is an accelerator out-of-memory error (CUDA or Apple MPS)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()
