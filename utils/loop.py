"""The training loop both 04_adapt and 05's fine-tuning run on: devices and mixed precision, seeded
loaders, AdamW with warmup + cosine, the step, the epoch, checkpoints and resume, data parallel.

A `Stepper` holds what one optimisation step needs; `train_epoch` runs its `compute` (batch →
loss and its parts) over a loader with gradient accumulation, clipping, AMP loss scaling and an
optional EMA, under a `tqdm.auto` progress bar (a widget in Jupyter). `run_epochs` is the epoch
loop: each epoch's data order, augmentations and dropout are seeded from its number, and after
every epoch `close_epoch` records its history row and writes the whole training state (model,
optimizer, schedule, scaler, EMA, random generators) atomically to a checkpoint, so a killed run
resumed with `load_checkpoint` ends exactly as an uninterrupted one.

Mixed precision follows `amp_dtype` (bf16 on Ampere+, fp16 with loss scaling on T4/P100, off on
CPU). With more than one device (DEVICES, default: every visible GPU, e.g. Kaggle's two T4s) a
run is data-parallel: `launch_data_parallel` starts one process per device through Accelerate's
`notebook_launcher` (forked, so it works inside a notebook), each takes its slice of every global
batch (Accelerate's `BatchSamplerShard`) and torch DDP averages the gradients; process 0 scores,
saves and checkpoints. A loss computed on the gathered global batch (`gather_batch`; fine-tuning's
Pearson and covariance terms) is scaled by the process count, so N processes train as one.

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from utils.choices import LOSSES
from utils.plots import figure
from utils.runs import load_state, save_state

# --- devices and precision --------------------------------------------------------------------


def default_device() -> torch.device:
    """CUDA if available, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # "auto": `amp_dtype`'s choice for the device


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed-precision dtype: bf16 on GPUs with native bf16 (Ampere+), fp16 on older ones
    (T4, P100: bf16 would only be emulated there), None (full precision) off CUDA. A
    `precision` other than "auto" forces one ("fp32": none), e.g. to check fp16 and bf16 on one
    GPU (benchmarks/gpu_check.py); forced mixed precision needs CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose from {PRECISIONS}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision != "auto":
            raise ValueError(f"precision {precision!r} needs a CUDA device, not {device.type}")
        return None
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision where it pays (see `amp_dtype`); off on CPU and MPS."""
    dtype = amp_dtype(device, precision)
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (a no-op for bf16 and full precision)."""
    return torch.amp.GradScaler(device.type,
                                enabled=amp_dtype(device, precision) == torch.float16)


def inference_batch_size(device: torch.device) -> int:
    """Patches per forward pass: small on CPU (cache-friendly: 2x faster than 64 on 2 cores)."""
    return 64 if device.type == "cuda" else 16


def train_batch_size(device: torch.device) -> int:
    """Default patches per training step: 32 on a GPU, 16 on CPU."""
    return 32 if device.type == "cuda" else 16


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes: NUM_WORKERS, else 0 on CPU (the model needs every core and
    the uint8 cache serves patches in microseconds) and up to 4 beside a GPU."""
    if num_workers is not None:
        return num_workers
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


# --- seeds and loaders ------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, unit: int, epoch: int) -> int:
    """A well-mixed seed for one epoch of one unit: the same on a resumed run."""
    return int(np.random.SeedSequence([seed, unit, epoch]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream, derived from the epoch seed."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2 ** 32)


def make_loader(dataset, batch_size: int, seed: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A shuffled training loader whose order and augmentations are fixed by `seed`. In a
    data-parallel run every process draws the same global batches and loads its own slice of
    each (Accelerate's `BatchSamplerShard`), with its own augmentation stream."""
    rank, processes = world()
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed + rank)  # used as is with workers=0
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(dataset, generator=generator), batch_size,
        drop_last=len(dataset) > batch_size)  # no batch of one: batch norm needs two
    if processes > 1:
        from accelerate.data_loader import BatchSamplerShard

        sampler = BatchSamplerShard(sampler, processes, rank, split_batches=True)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, generator=generator, num_workers=workers,
        worker_init_fn=_seed_worker, pin_memory=device.type == "cuda")


# --- optimizer and schedule -------------------------------------------------------------------

def make_optimizer(model: nn.Module, lr: float, head_lr: float, weight_decay: float,
                   layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW: `model.backbone` at `lr`, `model.heads` at `head_lr`; no weight decay on biases
    and norms (timm's `param_groups_weight_decay` split); frozen parameters are left out. With
    `layer_decay`, the backbone's layers learn at lr × layer_decay^(depth from the top) (timm's
    `param_groups_layer_decay`, layers from the model's own `group_matcher`)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    param_groups = []
    for part, module, rate in (("backbone", model.backbone, lr), ("heads", model.heads, head_lr)):
        if part == "backbone" and layer_decay is not None and layer_decay < 1:
            parts = param_groups_layer_decay(module, weight_decay, layer_decay=layer_decay)
        else:
            parts = param_groups_weight_decay(module, weight_decay)
        for group in parts:
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                scale = group.pop("lr_scale", 1.0)
                param_groups.append({**group, "params": params, "lr": rate * scale,
                                     "name": part})
    return torch.optim.AdamW(param_groups)


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                   total_steps: int) -> CosineLRScheduler:
    """timm's CosineLRScheduler, stepped once per optimizer update (`step_update`): linear
    warmup over `warmup_steps` from lr/(warmup+1) (never 0), then cosine decay to zero at
    `total_steps`. Each group keeps its own rate as timm's `lr_scale` of the highest one, so each
    warms up from its own rate/(warmup+1)."""
    top = max(group["lr"] for group in optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr_scale"], group["lr"] = group["lr"] / top, top
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps),
                             warmup_t=warmup_steps, warmup_lr_init=top / (warmup_steps + 1),
                             warmup_prefix=True, lr_min=0.0, t_in_epochs=False)


# --- the step ---------------------------------------------------------------------------------

@dataclass
class Stepper:
    """Everything one optimisation step needs. `compute(step, batch)` returns the loss, its
    parts (name → detached scalar) and the batch's size; the default reads (x, y) batches."""

    model: nn.Module
    loss_fn: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler  # `make_scheduler`, stepped with the updates done so far
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    device: torch.device
    grad_clip: float | None
    accumulate: int
    forward: nn.Module | None = None  # what training calls: the model, or DDP around it
    mixup: float | None = None  # Beta parameter of regression mixup; None: no mixing
    compute: Callable | None = None  # (step, batch) → (loss, parts, n); None: `regression_loss`
    global_loss: bool = True  # the loss is of the gathered global batch (× processes under DDP)
    after_step: Callable[[int], None] | None = None  # called with the steps done so far
    precision: str = "auto"  # of the forward pass (`amp_dtype`); the scaler must match it
    updates: int = 0  # optimizer updates done so far (checkpointed: the schedule's position)

    def __post_init__(self):
        self.forward = self.forward or self.model
        self.compute = self.compute or regression_loss


def mix_batch(x: torch.Tensor, y: torch.Tensor,
              alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression mixup: each patch blended with another of the batch, and its expression
    profile with the same weight λ ~ Beta(alpha, alpha) (one λ per batch, from torch's seeded
    generator, so a resumed epoch mixes as the first did)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(x)).to(x.device)
    x = x.float()
    return lam * x + (1 - lam) * x[order], lam * y + (1 - lam) * y[order]


def regression_loss(step: Stepper, batch) -> tuple[torch.Tensor, dict, int]:
    """An (images, targets) batch: mixup within this device's slice, the forward pass under
    autocast, then `loss_fn` on the whole global batch (gathered from every process)."""
    x, y = (t.to(step.device, non_blocking=True) for t in batch)
    if step.mixup:
        x, y = mix_batch(x, y, step.mixup)
    with autocast(step.device, step.precision):
        pred = step.forward(x)
    pred, y = gather_batch(pred.float(), y)
    loss, parts = step.loss_fn(pred, y)
    return loss, parts, len(y)


def optimizer_step(step: Stepper) -> None:
    """Unscale, clip, step, update the scaler, advance the schedule, the EMA and `after_step`."""
    if step.grad_clip:
        step.scaler.unscale_(step.optimizer)
        nn.utils.clip_grad_norm_(step.model.parameters(), step.grad_clip)
    step.scaler.step(step.optimizer)
    step.scaler.update()
    step.optimizer.zero_grad(set_to_none=True)
    step.updates += 1
    step.scheduler.step_update(step.updates)
    if step.ema is not None:
        step.ema.update(step.model, step=step.updates)
    if step.after_step is not None:
        step.after_step(step.updates)


def train_epoch(step: Stepper, loader, desc: str = "train",
                max_steps: int | None = None) -> dict[str, float]:
    """One pass over the loader (at most `max_steps` batches); returns the mean loss and loss
    parts, the batches, training images/s overall, images/s of the loader alone (time waiting
    for batches) and of the model alone (transfer, forward, backward, optimizer step; CUDA
    synchronised so the clock sees the GPU's work) and the peak GPU memory in GB (None off
    CUDA). loader ≫ model images/s: the GPU is the limit."""
    from tqdm.auto import tqdm

    step.forward.train()
    cuda = step.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(step.device)
    batches = len(loader) if max_steps is None else min(len(loader), max_steps)
    sums, names, n_images, start = None, [], 0, time.perf_counter()
    wait_s = model_s = 0.0
    bar = tqdm(itertools.islice(loader, batches), desc=desc, total=batches, leave=False,
               mininterval=2)
    tick = time.perf_counter()
    processes = world()[1]
    scale = processes if step.global_loss else 1  # DDP averages: × processes = the global sum
    for i, batch in enumerate(bar):
        got = time.perf_counter()
        wait_s += got - tick
        stepping = (i + 1) % step.accumulate == 0 or i + 1 == batches
        sync = contextlib.nullcontext() if stepping or processes == 1 else step.forward.no_sync()
        with sync:
            loss, parts, n = step.compute(step, batch)
            step.scaler.scale(loss * scale / step.accumulate).backward()
        if stepping:
            optimizer_step(step)
        names = list(parts)
        values = torch.stack([loss.detach(), *parts.values()])
        sums = values * n if sums is None else sums + values * n
        n_images += n
        if cuda:
            torch.cuda.synchronize(step.device)
        tick = time.perf_counter()
        model_s += tick - got
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    means = (sums / max(n_images, 1)).tolist() if sums is not None else [float("nan")]
    means = [None if math.isnan(m) else m for m in means]  # a term with weight 0 → None
    return {"loss": means[0], **dict(zip(names, means[1:])), "steps": batches,
            "images_per_s": n_images / (time.perf_counter() - start),
            "loader_images_per_s": n_images / max(wait_s, 1e-9),
            "model_images_per_s": n_images / max(model_s, 1e-9),
            "gpu_memory_gb": torch.cuda.max_memory_allocated(step.device) / 1e9 if cuda
            else None}


# --- epochs, checkpoints, resume --------------------------------------------------------------

def run_epochs(step: Stepper, dataset, batch_size: int, epochs: range,
               seed_of: Callable[[int], int], checkpoint: Path, state: dict,
               end_epoch: Callable[[dict], dict], workers: int = 0,
               max_steps: int | None = None, desc: str = "", on_saved: Callable | None = None,
               last_epoch: Callable[[], int] | None = None) -> dict:
    """Train each epoch of `epochs` on a loader seeded by `seed_of(epoch)` (data order,
    augmentations, dropout), then `close_epoch` with the row `end_epoch(stats)` makes of its
    training stats (epoch, lr, train_s added); `on_saved()` after each checkpoint. With
    `last_epoch`, training stops before an epoch past `last_epoch()` (early stopping: it reads
    `state`, so a resumed run stops where an uninterrupted one does). Returns the state (history
    and last epoch), as `load_checkpoint` would read it back."""
    for epoch in epochs:
        if last_epoch is not None and epoch > last_epoch():
            break
        seed = seed_of(epoch)
        seed_everything(seed)
        loader = make_loader(dataset, batch_size, seed, workers, step.device)
        start = time.perf_counter()
        name = f"{desc} epoch {epoch}/{epochs[-1]}".strip()
        stats = train_epoch(step, loader, name, max_steps)
        stats.update(epoch=epoch, lr=step.optimizer.param_groups[0]["lr"],
                     train_s=time.perf_counter() - start)
        close_epoch(step, state, epoch, lambda stats=stats: end_epoch(stats), checkpoint)
        if on_saved is not None:
            on_saved()
    return state


def close_epoch(step: Stepper, state: dict, epoch: int, make_row: Callable[[], dict],
                checkpoint: Path) -> None:
    """After an epoch (0: the starting point), process 0 makes its history row (validation
    belongs here), appends it, checkpoints the full state and prints the row; the other
    processes of a data-parallel run only count the epoch and wait for it."""
    state["epoch"] = epoch
    if world()[0] == 0:
        row = make_row()
        state["history"].append(row)
        save_checkpoint(checkpoint, step, state)
        print(format_epoch(row), flush=True)
    wait_for_others()


def save_checkpoint(path: Path, step: Stepper, state: dict) -> None:
    """The full training state after an epoch, written atomically."""
    ckpt = {"model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "updates": step.updates,
            "scaler": step.scaler.state_dict(),
            "ema": step.ema.state_dict() if step.ema is not None else None,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            **state}
    save_state(path, ckpt)


def load_checkpoint(path: Path, step: Stepper) -> dict:
    """Restore a training state saved by `save_checkpoint`; returns the loop state."""
    ckpt = load_state(path)  # weights_only=True: a pickle that would run code is refused
    step.model.load_state_dict(ckpt["model"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    step.scheduler.load_state_dict(ckpt["scheduler"])
    step.updates = ckpt["updates"]
    if ckpt["scaler"]:
        step.scaler.load_state_dict(ckpt["scaler"])
    if step.ema is not None and ckpt["ema"] is not None:
        step.ema.load_state_dict(ckpt["ema"])
    rng = ckpt["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return {k: ckpt[k] for k in ("history", "epoch")}


def format_epoch(row: dict) -> str:
    """One log line per epoch: training loss and its terms, speed, validation parts."""
    head = " ".join(str(p) for p in (row.get("unit"), f"epoch {row['epoch']}") if p)
    parts = []
    if row.get("loss") is not None:
        terms = " ".join(f"{k} {row[k]:.3g}" for k in (*LOSSES, "cov")
                         if row.get(k) is not None)  # a term with weight 0 is None
        memory = "" if row.get("gpu_memory_gb") is None else f", GPU {row['gpu_memory_gb']:.1f} GB"
        speed = "" if "model_images_per_s" not in row else (
            f" (loader {row['loader_images_per_s']:.0f}, model "
            f"{row['model_images_per_s']:.1f}{memory})")
        steps = f"{row['steps']} steps, " if "steps" in row else ""
        parts.append(f"loss {row['loss']:.4f}{f' ({terms})' if terms else ''}, {steps}"
                     f"{row['images_per_s']:.1f} img/s{speed}")
    if "val_score" in row:
        detail = " ".join(f"{k} {row['val_' + k]:.3f}" for k in ("cells", "max_gene", "heg50",
                                                                  "hvg50"))
        parts.append(f"val score {row['val_score']:.4f} ({detail})")
    if "stop_score" in row:
        parts.append(f"stopping rows {row['stop_score']:.4f}")
    return f"{head}: " + "; ".join(parts)


def plot_history(history: list[dict], choice: dict[str, dict] | None = None):
    """Training loss per epoch, one line per unit; with validation rows (fine-tuning) also the
    validation score (dotted: its stopping rows, with PATIENCE), ★ marking the epoch a unit's
    OOF predictions come from (chosen without its fold: best on its stopping rows, or its last)
    and ○ its own best. None for an empty history (a frozen-feature run)."""
    if not history:
        return None
    scored = any("val_score" in row for row in history)
    fig, axes = figure(10 if scored else 5, 3.5 if scored else 3, ncols=2 if scored else 1,
                       squeeze=False)
    left = axes[0, 0]
    for name in dict.fromkeys(row.get("unit") for row in history):
        rows = [row for row in history if row.get("unit") == name]
        trained = [row for row in rows if row.get("loss") is not None]
        left.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", ms=3,
                  label=name)
        if scored:
            _plot_scores(axes[0, 1], rows, name, (choice or {}).get(name))
    left.set(xlabel="epoch", ylabel="training loss", title="loss (mean over the epoch)")
    if scored:
        axes[0, 1].set(xlabel="epoch (0: before training)", ylabel="official score",
                       title="validation score (★ epoch chosen without this fold, ○ own best)")
        axes[0, 1].legend(fontsize="small", ncols=2)
    for ax in axes.ravel():
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _plot_scores(ax, rows: list[dict], name: str, choice: dict | None) -> None:
    """One unit's validation curve, its best epoch (○) and its chosen OOF epoch (★)."""
    epochs, scores = [r["epoch"] for r in rows], [r["val_score"] for r in rows]
    line, = ax.plot(epochs, scores, "o-", ms=3, label=name)
    if all("stop_score" in r for r in rows):
        ax.plot(epochs, [r["stop_score"] for r in rows], ":", color=line.get_color())
    best = int(np.argmax(scores))
    ax.plot(epochs[best], scores[best], "o", ms=10, mfc="none", color=line.get_color())
    if choice:
        pick = epochs.index(choice["oof_epoch"])
        ax.plot(epochs[pick], scores[pick], "*", ms=12, color=line.get_color())


# --- several devices --------------------------------------------------------------------------

def device_count(devices: int | None) -> int:
    """Data-parallel processes: DEVICES, else every visible GPU (1 without CUDA). DEVICES > 1
    on CPU runs that many gloo processes (what the tests use; no faster on a laptop)."""
    if devices is not None:
        return devices
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch_data_parallel(worker: Callable, args: tuple, devices: int, batch_size: int,
                         checkpoints: Path) -> None:
    """Run `worker(*args)` in `devices` processes through Accelerate's notebook launcher, after
    checking that the global batch splits evenly and that the GPUs can still be claimed."""
    from accelerate import notebook_launcher

    if batch_size % devices:
        raise ValueError(f"BATCH_SIZE={batch_size} must be a multiple of DEVICES={devices}: it "
                         "is the global batch, split evenly across the devices")
    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise ValueError(f"DEVICES={devices} but only {torch.cuda.device_count()} GPU(s) visible")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError(
            f"DEVICES={devices}: CUDA is already in use in this kernel, and the processes for the "
            "other GPUs can only be started before it is. Restart the kernel (Kaggle: Run → "
            "Restart & clear outputs) and run this notebook top to bottom, or set DEVICES=1. "
            f"Finished epochs are kept in {checkpoints} (RESUME=True continues).")
    print(f"training on {devices} devices, global batch {batch_size} "
          f"({batch_size // devices} per device)", flush=True)
    notebook_launcher(worker, args, num_processes=devices)


@contextlib.contextmanager
def data_parallel_process() -> Iterator[bool]:
    """Inside one process of a data-parallel run: join the process group (NCCL on GPUs, gloo on
    CPU, sharing the cores), yield whether this is the main process, then wait for the others."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    yield state.is_main_process
    state.wait_for_everyone()


def world() -> tuple[int, int]:
    """(rank, processes) of this process in a data-parallel run; (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def wait_for_others() -> None:
    """A barrier in a data-parallel run (process 0 scores and saves meanwhile); else nothing."""
    if world()[1] > 1:
        torch.distributed.barrier()


def process_device() -> torch.device:
    """This process's device: its own GPU in a data-parallel run, else `default_device()`."""
    rank, processes = world()
    if processes > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return default_device()


def gather_batch(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole global batch on every process, so batch-level loss terms see all of it; the
    other processes' predictions come detached (their gradients are theirs to compute)."""
    rank, processes = world()
    if processes == 1:
        return pred, target
    preds = [torch.empty_like(pred) for _ in range(processes)]
    targets = [torch.empty_like(target) for _ in range(processes)]
    torch.distributed.all_gather(preds, pred.detach().contiguous())
    torch.distributed.all_gather(targets, target.contiguous())
    preds[rank] = pred
    return torch.cat(preds), torch.cat(targets)


def wrap_data_parallel(model: nn.Module, device: torch.device, freeze_bn: bool) -> nn.Module:
    """The module to call in training: `model` itself, or torch DDP around it in a
    data-parallel run (batch norm synchronised across GPUs unless its statistics are frozen)."""
    if world()[1] == 1:
        return model
    if device.type == "cuda" and not freeze_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# --- errors -----------------------------------------------------------------------------------

def is_oom(err: BaseException) -> bool:
    """Whether an exception is an accelerator out-of-memory error (CUDA or Apple MPS)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def oom_error(err: BaseException, batch_size: int, img_size: int | None, checkpoints: Path,
              resume: bool) -> RuntimeError:
    """A GPU out-of-memory error that says what to change and how to continue."""
    again = ("run the notebook again: RESUME=True continues from the last finished epoch "
             if resume else "set RESUME=True and run again to continue from the last epoch ")
    return RuntimeError(
        f"GPU out of memory with BATCH_SIZE={batch_size}, IMG_SIZE={img_size}: lower BATCH_SIZE "
        f"(e.g. {max(1, batch_size // 2)} with ACCUMULATE doubled keeps the effective batch), "
        f"lower IMG_SIZE or FREEZE the first backbone blocks, then {again}(checkpoints in "
        f"{checkpoints}). Original error: {str(err).splitlines()[0] if str(err) else err!r}")
