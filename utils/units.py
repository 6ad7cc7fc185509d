"""One unit of a fine-tuning run: a model trained on one fold's rows, checkpointed every epoch.

A unit is one fold (GROUP_MODE="heads": one backbone, a head per gene group) or one fold and one
gene group (GROUP_MODE="models"). `fit_unit` fits the target scaling on the unit's training rows,
optionally starts the heads from a ridge linear probe, trains with `utils.train`, scores the
validation rows with the official metric after every epoch (epoch 0 is the starting point),
keeps the best weights and stops early. After every epoch `last.pt` holds the full training
state (model, optimizer, scheduler, scaler, EMA, RNG states, history), written atomically; the
data order and augmentations of an epoch are seeded from (SEED, unit, epoch), so a killed run
resumed from its last checkpoint ends exactly as an uninterrupted one.

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.train import (
    Stepper,
    epoch_seed,
    is_oom,
    loader_workers,
    make_loader,
    make_optimizer,
    make_scheduler,
    oom_error,
    predict,
    seed_everything,
    train_batch_size,
    train_epoch,
)


@dataclass
class Unit:
    """One model to train: a fold's rows and the genes (and heads over them) it predicts."""

    name: str  # "fold0" or "fold0-<group>"
    index: int  # position in the run's list of units (part of every epoch's seed)
    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    genes: np.ndarray  # column indices into the data's genes
    heads: dict[str, np.ndarray]  # head name → positions in `genes`
    group: str | None = None


def fit_unit(unit: Unit, cfg, images: np.ndarray, test_images: np.ndarray, y: np.ndarray,
             folder: Path, weights: Path) -> dict:
    """Train one unit (resuming from `folder/last.pt` if present) and predict with its best
    weights: validation rows and test patches on the original scale, plus the epoch history.

    A finished unit leaves `folder/result.npz` and is not trained again; the best weights go to
    `weights` (safetensors) whenever the validation score improves.
    """
    from utils.data import PatchDataset

    if (folder / "result.npz").is_file():
        return load_result(folder / "result.npz")
    setup = setup_unit(unit, cfg, images, y, resume=(folder / "last.pt").is_file())
    step, device, batch_size = setup["step"], setup["device"], setup["batch_size"]
    state = {"best": -math.inf, "best_epoch": None, "bad": 0, "history": [], "epoch": 0}
    try:
        if (folder / "last.pt").is_file():
            state = load_checkpoint(folder / "last.pt", step)
        else:
            _end_epoch(unit, cfg, step, images, y, state, {"epoch": 0}, folder, weights)
        dataset = PatchDataset(images, setup["z"], unit.train_idx, setup["transform"])
        workers = loader_workers(cfg.num_workers, device)
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if cfg.patience and state["bad"] >= cfg.patience:
                break
            seed = epoch_seed(cfg.seed, unit.index, epoch)
            seed_everything(seed)
            loader = make_loader(dataset, batch_size, seed, workers, device)
            start = time.perf_counter()
            stats = train_epoch(step, loader, f"{unit.name} epoch {epoch}/{cfg.epochs}")
            stats.update(epoch=epoch, lr=step.optimizer.param_groups[0]["lr"],
                         train_s=time.perf_counter() - start)
            _end_epoch(unit, cfg, step, images, y, state, stats, folder, weights)
        return _finish(unit, cfg, step.model, images, test_images, state, folder, weights)
    except RuntimeError as err:
        if is_oom(err):
            raise oom_error(err, batch_size, cfg.img_size, folder, cfg.resume) from err
        raise


def setup_unit(unit: Unit, cfg, images: np.ndarray, y: np.ndarray, resume: bool) -> dict:
    """Model (targets fitted on the unit's training rows, stages frozen, heads initialised by
    ridge unless resuming), optimizer, schedule, scaler, EMA, loss and augmentation."""
    from utils.augment import build_augment
    from utils.backbones import default_device, grad_scaler
    from utils.losses import create_loss
    from utils.models import build_model, freeze_stages, set_targets

    device = default_device()
    batch_size = cfg.batch_size or train_batch_size(device)
    model = build_model(unit_spec(unit, cfg), cfg.pretrained, cfg.seed)
    set_targets(model, y[unit.train_idx][:, unit.genes])
    z = ((y[:, unit.genes] - model.y_mean.numpy()) / model.y_std.numpy()).astype(np.float32)
    freeze_stages(model, cfg.freeze)
    model.freeze_bn = cfg.freeze_bn
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    if cfg.head_init == "ridge" and not resume:
        init_heads_by_ridge(model, cfg, images, unit, z, y)
    steps_per_epoch = math.ceil(max(1, len(unit.train_idx) // batch_size) / cfg.accumulate)
    optimizer = make_optimizer(model, cfg.lr, cfg.head_lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps_per_epoch),
                               cfg.epochs * steps_per_epoch)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    groups = list(unit.heads.values()) if len(unit.heads) > 1 else None
    step = Stepper(model, create_loss(cfg.loss_weights, groups), optimizer, scheduler,
                   grad_scaler(device), ema, device, cfg.grad_clip, cfg.accumulate)
    return {"step": step, "device": device, "batch_size": batch_size, "z": z,
            "transform": build_augment(cfg.augment)}


def unit_spec(unit: Unit, cfg):
    """The ModelSpec of a unit: backbone, size, genes, heads and their PCA dims."""
    from utils.config import parse_target
    from utils.models import ModelSpec, plan_heads

    dims = plan_heads(unit.heads, parse_target(cfg.target), len(unit.train_idx))
    return ModelSpec(cfg.backbone, cfg.img_size, unit.genes.tolist(),
                     {k: v.tolist() for k, v in unit.heads.items()}, dims, cfg.drop_path)


def init_heads_by_ridge(model: nn.Module, cfg, images: np.ndarray, unit: Unit, z: np.ndarray,
                        y: np.ndarray) -> float:
    """Linear probe: ridge from frozen features to every head's targets (alpha by inner block
    CV on the metric over the training rows), then fine-tuning starts from it. Returns alpha."""
    from utils.cv import make_folds
    from utils.models import init_heads_ridge
    from utils.ridge import cv_ridge

    rows = unit.train_idx
    features = predict(model, images, rows, features=True)
    inner = make_folds("blocks", len(rows), min(3, len(rows)))
    alpha = cv_ridge(features, y[rows][:, unit.genes], features[:1], inner, cfg.alphas,
                     cfg.pca_dim).alpha
    init_heads_ridge(model, features, z[rows], alpha, cfg.pca_dim)
    return alpha


def _end_epoch(unit: Unit, cfg, step: Stepper, images: np.ndarray, y: np.ndarray, state: dict,
               stats: dict, folder: Path, weights: Path) -> None:
    """Score the validation rows, keep the best weights, record the epoch, checkpoint."""
    from utils.metric import score
    from utils.models import save_weights

    model = step.ema.module if step.ema is not None else step.model
    pred = to_original(model, predict(model, images, unit.val_idx, device=step.device))
    parts = score(y[unit.val_idx][:, unit.genes], pred)
    row = {"unit": unit.name, "fold": unit.fold, "group": unit.group, **stats,
           **{f"val_{k}": v for k, v in parts.items()}}
    state["history"].append(row)
    state["epoch"] = stats["epoch"]
    if parts["score"] > state["best"]:
        state.update(best=parts["score"], best_epoch=stats["epoch"], bad=0)
        save_weights(model, weights)
    else:
        state["bad"] += 1
    save_checkpoint(folder / "last.pt", step, state)
    print(format_epoch(row, state, cfg.epochs), flush=True)


def format_epoch(row: dict, state: dict, epochs: int) -> str:
    """One log line per epoch: training loss terms, validation parts, best so far, speed."""
    terms = " ".join(f"{k} {row[k]:.3g}" for k in ("mse", "pearson", "cov")
                     if row.get(k) is not None)  # a term with weight 0 is None
    train = "" if "loss" not in row else (
        f"loss {row['loss']:.4f} ({terms}), {row['images_per_s']:.1f} img/s; ")
    parts = " ".join(f"{k} {row['val_' + k]:.3f}" for k in ("cells", "max_gene", "heg50",
                                                              "hvg50"))
    return (f"{row['unit']} epoch {row['epoch']}/{epochs}: {train}val score "
            f"{row['val_score']:.4f} ({parts}); best {state['best']:.4f} @ {state['best_epoch']}")


def _finish(unit: Unit, cfg, model: nn.Module, images: np.ndarray, test_images: np.ndarray,
            state: dict, folder: Path, weights: Path) -> dict:
    """Predict validation rows and test patches with the best weights (D4 TTA if TTA and not
    SMOKE), store the unit's result and drop its training state."""
    from utils.models import load_weights

    load_weights(model, weights)
    tta = cfg.tta and not cfg.smoke
    result = {"val_pred": to_original(model, predict(model, images, unit.val_idx, tta)),
              "test_pred": to_original(model, predict(model, test_images, None, tta)),
              "history": state["history"], "best_epoch": state["best_epoch"],
              "best_score": state["best"]}
    save_result(folder / "result.npz", result)
    (folder / "last.pt").unlink(missing_ok=True)
    return result


def to_original(model: nn.Module, z: np.ndarray) -> np.ndarray:
    """Standardised model outputs back on the original expression scale (numpy)."""
    return (z * model.y_std.cpu().numpy() + model.y_mean.cpu().numpy()).astype(np.float32)


def save_checkpoint(path: Path, step: Stepper, state: dict) -> None:
    """The full training state after an epoch, written atomically."""
    from utils.io import write_with

    ckpt = {"model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "scaler": step.scaler.state_dict(),
            "ema": step.ema.state_dict() if step.ema is not None else None,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            **state}
    write_with(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path, step: Stepper) -> dict:
    """Restore a training state saved by `save_checkpoint`; returns the loop state."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    step.model.load_state_dict(ckpt["model"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    step.scheduler.load_state_dict(ckpt["scheduler"])
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
    return {k: ckpt[k] for k in ("best", "best_epoch", "bad", "history", "epoch")}


def save_result(path: Path, result: dict) -> None:
    """A finished unit's predictions and history, written atomically."""
    from utils.io import write_with

    info = json.dumps({k: result[k] for k in ("history", "best_epoch", "best_score")})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, val_pred=result["val_pred"], test_pred=result["test_pred"],
                     info=np.array(info))

    write_with(path, write)


def load_result(path: Path) -> dict:
    """A finished unit's result saved by `save_result`."""
    with np.load(path) as data:
        return {"val_pred": data["val_pred"], "test_pred": data["test_pred"],
                **json.loads(str(data["info"]))}
