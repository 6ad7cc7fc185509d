"""05's fine-tuning units: what one unit is, how it is validated after every epoch, its
predictions and the files a fine-tuning run leaves.

A unit is one trained model: a fold's rows and the genes it predicts, with one head per gene
group ("fold0", GROUP_MODE="heads"), or one gene group alone ("fold0-<group>", "models"). Its
`ModelSpec` rebuilds it from model.json (06 does). After every epoch (epoch 0: the starting
point) `score_epoch` scores the unit's validation rows with the official metric and keeps that
epoch's weights until the run is done; `predict_unit` then predicts the validation rows at the
epoch chosen without them and the test patches at the epoch chosen on all folds, with D4 TTA.
The loop itself is `utils.loop`; the recipe that runs the units is `utils.train`.

This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.config import TrainConfig
from utils.cv import stopping_rows
from utils.data import KitData
from utils.files import write_json, write_with
from utils.loop import (
    Stepper,
    amp_dtype,
    autocast,
    default_device,
    inference_batch_size,
    plot_history,
    train_batch_size,
)
from utils.metric import score
from utils.models import ModelSpec, build_model, load_weights, plan_heads, save_weights, tta_views
from utils.plots import save_figure
from utils.runs import weights_file


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
    # rows of the other folds held out of training (PATIENCE), scored after every epoch to stop
    # and choose the OOF epoch on; empty: none
    stop_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def plan_units(folds: np.ndarray, groups_by_fold: dict[int, dict[str, np.ndarray]],
               group_mode: str, stopping_fraction: float = 0.0) -> list[Unit]:
    """The models to train: one per fold ("heads") or one per fold and group ("models"); with
    `stopping_fraction`, each keeps that share of its training rows out of training, to stop on
    (`utils.cv.stopping_rows`)."""
    units: list[Unit] = []
    for k in np.unique(folds):
        groups = groups_by_fold[int(k)]
        n_genes = sum(len(cols) for cols in groups.values())
        held = (stopping_rows(folds, k, stopping_fraction) if stopping_fraction
                else np.zeros(0, np.int64))
        train_rows = np.setdiff1d(np.flatnonzero(folds != k), held)
        rows = {"train_idx": train_rows, "val_idx": np.flatnonzero(folds == k), "stop_idx": held}
        if group_mode == "heads":
            units.append(Unit(f"fold{k}", len(units), int(k), genes=np.arange(n_genes),
                              heads=dict(groups), **rows))
            continue
        for name, cols in groups.items():
            units.append(Unit(f"fold{k}-{slug(name)}", len(units), int(k), genes=np.asarray(cols),
                              heads={name: np.arange(len(cols))}, group=name, **rows))
    return units


def slug(name: str) -> str:
    """A group name made safe for file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "group"


def unit_spec(unit: Unit, cfg: TrainConfig) -> ModelSpec:
    """The ModelSpec of a unit: backbone, size, genes, heads and their PCA dims, and the
    feature set its heads read (FEATURE_STAGES, FEATURE_CROPS)."""
    dims = plan_heads(unit.heads, cfg.target_pca, len(unit.train_idx))
    stages = cfg.feature_stages
    return ModelSpec(cfg.backbone, cfg.img_size, unit.genes.tolist(),
                     {k: v.tolist() for k, v in unit.heads.items()}, dims, cfg.drop_path,
                     cfg.mpp, cfg.model_mpp, cfg.mpp_fit,
                     stages if stages in (None, "all") else list(stages), list(cfg.feature_crops))


# --- predictions ------------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, indices: np.ndarray | None = None,
            tta: bool | str = False, device: torch.device | None = None,
            batch_size: int | None = None, features: bool = False) -> np.ndarray:
    """Model outputs (rows, outputs) for uint8 (N, H, W, 3) patches, averaged over the TTA views
    (`tta_views`: True the 8 dihedral ones, "flips" 4, False none);
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
            views = [forward(v).float() for v in tta_views(x, tta)]
        out.append(torch.stack(views).mean(0).cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)


def to_original(model: nn.Module, z: np.ndarray) -> np.ndarray:
    """Standardised model outputs back on the original expression scale (numpy)."""
    return (z * model.y_std.cpu().numpy() + model.y_mean.cpu().numpy()).astype(np.float32)


def score_epoch(unit: Unit, step: Stepper, images: np.ndarray, y: np.ndarray, stats: dict,
                folder: Path) -> dict:
    """The history row of an epoch: its training stats and every part of the official score on
    the unit's validation rows (EMA weights if EMA is on), and with stopping rows their score
    (`stop_score`); that epoch's weights are kept."""
    model = step.ema.module if step.ema is not None else step.model
    rows = np.concatenate([unit.val_idx, unit.stop_idx])  # one pass over both
    pred = to_original(model, predict(model, images, rows, device=step.device))
    parts = score(y[unit.val_idx][:, unit.genes], pred[:len(unit.val_idx)])
    save_weights(model, epoch_weights(folder, stats["epoch"]))
    row = {"unit": unit.name, "fold": unit.fold, "group": unit.group, **stats,
           **{f"val_{k}": v for k, v in parts.items()}}
    if len(unit.stop_idx):
        row["stop_score"] = score(y[unit.stop_idx][:, unit.genes],
                                  pred[len(unit.val_idx):])["score"]
    return row


def epoch_weights(folder: Path, epoch: int) -> Path:
    """Where a unit's weights after `epoch` are kept until the run is done."""
    return folder / f"epoch{epoch}.safetensors"


def remove_epoch_weights(folder: Path) -> None:
    """Drop a finished unit's per-epoch weights (its chosen ones live on in weights/)."""
    for path in folder.glob("epoch*.safetensors"):
        path.unlink(missing_ok=True)


def predict_unit(unit: Unit, cfg: TrainConfig, images: np.ndarray, test_images: np.ndarray,
                 choice: dict, folder: Path, weights: Path) -> dict:
    """Validation rows at the unit's OOF epoch and test patches at its test epoch (D4 TTA if TTA
    and not SMOKE), stored in `folder/result.npz`; the test epoch's weights become the unit's
    weights file (what model.json and 06 use)."""
    epochs = {"oof_epoch": choice["oof_epoch"], "test_epoch": choice["test_epoch"]}
    if (folder / "result.npz").is_file():
        result = load_result(folder / "result.npz")
        if {k: result[k] for k in epochs} == epochs:
            return result
    model = build_model(unit_spec(unit, cfg), pretrained=False).to(default_device())
    tta = cfg.applied_tta
    load_weights(model, epoch_weights(folder, choice["oof_epoch"]))
    val_pred = to_original(model, predict(model, images, unit.val_idx, tta))
    load_weights(model, epoch_weights(folder, choice["test_epoch"]))
    result = {"val_pred": val_pred,
              "test_pred": to_original(model, predict(model, test_images, None, tta)), **epochs}
    save_weights(model, weights)
    save_result(folder / "result.npz", result)
    return result


def save_result(path: Path, result: dict) -> None:
    """A unit's OOF and test predictions and the epochs they come from, written atomically."""
    info = json.dumps({k: result[k] for k in ("oof_epoch", "test_epoch")})

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


# --- the run's records ------------------------------------------------------------------------

def annotate_epochs(cv: dict, units: list[Unit], choice: dict[str, dict]) -> None:
    """Record in a CV report which epoch each fold's score comes from and how it was chosen, and
    the optimistic best-on-fold scores (each fold's own best epoch, validation without TTA)."""
    for k, parts in enumerate(cv["folds"]):
        picked = [choice[u.name] for u in units if u.fold == k]
        epochs = sorted({c["oof_epoch"] for c in picked})
        parts.update(epoch=epochs[0] if len(epochs) == 1 else epochs,
                     selection=picked[0]["selection"],
                     best_epoch_on_fold=[c["best_epoch_on_fold"] for c in picked],
                     best_score_on_fold=[c["best_score_on_fold"] for c in picked])
    best = [c["best_score_on_fold"] for c in choice.values()]
    cv["optimistic"] = {"note": "each fold at its own best epoch (chosen on its own rows; "
                                "validation without TTA): optimistic, not a CV score",
                        "mean_best_score_on_fold": float(np.mean(best))}


def write_outputs(cfg: TrainConfig, data: KitData, run: Path, units: list[Unit],
                  choice: dict[str, dict], history: list[dict]) -> None:
    """model.json (to rebuild every unit's model), history.json and curves.png."""
    import matplotlib.pyplot as plt

    model = {"recipe": "finetune", "backbone": cfg.backbone, "pretrained": cfg.pretrained,
             "img_size": cfg.img_size, "target_pca": cfg.target_pca,
             "group_mode": cfg.group_mode, "group_strategy": cfg.group_strategy,
             "gene_groups": cfg.gene_groups if cfg.group_strategy else None,
             "genes": data.genes,
             "units": {u.name: {"fold": u.fold, "group": u.group,
                                "spec": unit_spec(u, cfg).to_dict(),
                                "weights": weights_file(u.name),
                                "epoch": choice[u.name]["test_epoch"],
                                "oof_epoch": choice[u.name]["oof_epoch"]} for u in units}}
    write_json(run / "model.json", model)
    write_json(run / "history.json", history)
    fig = plot_history(history, choice)
    save_figure(fig, run, "curves")
    plt.close(fig)


def run_details(cfg: TrainConfig, units: list[Unit], choice: dict[str, dict],
                history: list[dict]) -> dict:
    """What config.json records about the fine-tuning beyond the parameters."""
    device = default_device()
    speeds = [row["images_per_s"] for row in history if "images_per_s" in row]
    return {"group_mode": cfg.group_mode, "group_strategy": cfg.group_strategy,
            "n_groups": len({u.group for u in units}) if cfg.group_mode == "models"
            else len(units[0].heads), "target_pca": cfg.target_pca,
            "tta": cfg.applied_tta, "device": device.type,
            "amp": str(amp_dtype(device)), "batch_size": cfg.batch_size or train_batch_size(device),
            "train_images_per_s": round(float(np.mean(speeds)), 1) if speeds else None,
            "units": {u.name: {**choice[u.name], "epochs_run": max(
                row["epoch"] for row in history if row["unit"] == u.name)} for u in units}}
