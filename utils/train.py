"""05_train: training recipes by name, each turning (config, data, folds) into a run folder.

`ridge` — frozen timm features (D4 TTA) → standardise → optional PCA → ridge. One SVD per
training set gives the ridge solution for every alpha at once (the same solution as sklearn's
`Ridge(alpha)` on standardised features; a test checks it), so choosing alpha by nested CV on
the official metric costs little.

`finetune` — a timm backbone fine-tuned on every CV fold. Per fold, one model (GROUP_MODE=
"heads": one backbone, one head per gene group) or one model per gene group (GROUP_MODE=
"models", the seed team's way) is a *unit*. `fit_unit` fits the unit's target scaling on its
training rows, optionally starts the heads from a ridge linear probe, trains with the loop
below (AdamW, warmup + cosine, mixed precision, gradient accumulation, clipping, EMA), scores the
validation rows with the official metric after every epoch (epoch 0 is the starting point),
keeps the best weights and stops early. After every epoch `last.pt` holds the full training
state, written atomically; the data order and augmentations of an epoch are seeded from (SEED,
unit, epoch), so a killed run resumed from its last checkpoint ends exactly as an uninterrupted
one. Besides the run files (`utils.runs`) it writes model.json, weights/, history.json,
curves.png and checkpoints/.

Mixed precision follows `utils.models.amp_dtype` (bf16 on Ampere+, fp16 with loss scaling on
T4/P100, off on CPU). With more than one device (DEVICES, default: every visible GPU, e.g.
Kaggle's two T4s) the units are trained data-parallel: Accelerate's `notebook_launcher` starts
one process per device (forked, so it works inside a notebook), each takes its slice of every
global batch (Accelerate's `BatchSamplerShard`) and torch DDP averages the gradients. The
batch-level loss terms (Pearson, covariance) see the whole global batch, gathered from every
process, so N processes train as one with the same global batch, up to floating-point noise (a
test checks it with two CPU processes). Process 0 scores, saves and checkpoints.
This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.augment import build_augment, read_policy
from utils.config import TrainConfig, parse_target, to_dict
from utils.data import KitData, PatchDataset, load_images
from utils.duplicates import find_duplicates
from utils.genes import LABEL_FREE, groups_on_rows, load_gene_groups, read_grouping_config
from utils.metric import (
    KEYS,
    make_folds,
    max_gene_floor,
    nested_choice,
    pearson_genes,
    read_groups,
    score,
    score_folds,
    split_rows,
    top_genes,
)
from utils.models import (
    GeneRegressor,
    ModelSpec,
    amp_dtype,
    autocast,
    build_model,
    cached_features,
    create_loss,
    d4_views,
    default_device,
    freeze_stages,
    grad_scaler,
    inference_batch_size,
    load_weights,
    plan_heads,
    save_weights,
    set_targets,
)
from utils.paths import (
    check_output,
    figure,
    read_json,
    remove_file,
    resolve,
    save_figure,
    write_json,
    write_with,
)
from utils.runs import (
    Run,
    Stopwatch,
    load_run,
    load_state,
    peak_rss_gb,
    prepare_checkpoints,
    reuse_run,
    save_run,
    save_state,
    weights_file,
)


@dataclass
class RecipeResult:
    """What a recipe returns: predictions on the original scale, CV report, recipe details."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    details: dict = field(default_factory=dict)


def make_cv_folds(cfg: TrainConfig, data: KitData) -> tuple[np.ndarray, str]:
    """The fold of every train row and the splitter actually used (CV='slices' falls back to
    blocks, with a warning, when the rows show no slice structure), duplicate train patches in
    one fold; prints the duplicate audit's line and how the folds were made."""
    groups = read_groups(cfg.cv, data.train, data.root)
    duplicates = find_duplicates(data)
    print(duplicates.summary())
    folds, splitter, note = split_rows(cfg.cv, data.y, cfg.n_folds, cfg.seed, groups,
                                       duplicates.train_groups())
    print(note)
    return folds, splitter


def train(cfg: TrainConfig, data: KitData, folds: np.ndarray, splitter: str | None = None) -> Run:
    """Run the configured recipe on `folds` and save its run folder (`splitter` names them in
    cv.json; default CV); reuse a finished identical run."""
    if cfg.recipe == "finetune":
        read_policy(cfg.augment)  # a missing or broken AUGMENT file fails now, not after hours
    check_output(cfg.run_dir, "RUN_DIR")
    run = None if cfg.overwrite else reuse_run(cfg.run_dir, to_dict(cfg), data)
    if run is not None:
        print(f"{run.path} is already trained with these parameters: loaded it "
              "(OVERWRITE=True retrains)")
        return run
    start = time.perf_counter()
    result = RECIPES[cfg.recipe](cfg, data, folds, splitter or cfg.cv)
    earlier = result.details.pop("elapsed_before_s", 0.0)  # a resumed run's earlier processes
    config = {**to_dict(cfg), "data_root": str(data.root), "n_train": len(data.train),
              "n_test": len(data.test), "n_genes": len(data.genes), "details": result.details,
              "data_fingerprint": data.fingerprint,
              "elapsed_s": round(earlier + time.perf_counter() - start, 1),
              "peak_rss_gb": peak_rss_gb()}
    save_run(cfg.run_dir, config, folds, result.oof, result.test_pred, result.cv)
    return load_run(cfg.run_dir)


# --- ridge ----------------------------------------------------------------------------------

@dataclass
class RidgePath:
    """Ridge fitted for many alphas at once on standardised (optionally PCA-reduced) features."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    components: np.ndarray  # (k, d) right singular vectors
    singular: np.ndarray  # (k,)
    uty: np.ndarray  # (k, g) = U^T (y - y_mean)

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """Predictions (n, genes) on the original target scale for one alpha."""
        z = ((x - self.x_mean) / self.x_scale) @ self.components.T
        shrink = self.singular / (self.singular ** 2 + alpha)
        return ((z * shrink) @ self.uty + self.y_mean).astype(np.float32)


def fit_ridge_path(x: np.ndarray, y: np.ndarray, pca_dim: int | None = None,
                   target_dim: int | None = None) -> RidgePath:
    """Standardise x, take its SVD (keeping `pca_dim` components if set), project y.

    `target_dim` (TARGET="pca:K"): ridge on the top-K principal components of the standardised
    targets of these rows, decoded back to every gene (the rest is treated as noise).
    """
    x = np.asarray(x, dtype=np.float64)
    x_mean, x_scale = x.mean(axis=0), x.std(axis=0)
    x_scale[x_scale < 1e-12] = 1.0
    y_mean = y.mean(axis=0, dtype=np.float64)
    u, s, vt = np.linalg.svd((x - x_mean) / x_scale, full_matrices=False)
    k = len(s) if pca_dim is None else min(pca_dim, len(s))
    uty = u[:, :k].T @ (y - y_mean)
    if target_dim is not None:  # ridge is linear in y: fitting the PCs = projecting onto them
        y_scale = y.std(axis=0, dtype=np.float64)
        y_scale[y_scale < 1e-12] = 1.0
        axes = np.linalg.svd((y - y_mean) / y_scale, full_matrices=False)[2][:target_dim]
        uty = ((uty / y_scale) @ axes.T @ axes) * y_scale
    return RidgePath(x_mean, x_scale, y_mean, vt[:k], s[:k], uty)


@dataclass
class RidgeResult:
    """Out-of-fold and test predictions, the CV report and how alpha was chosen."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    alpha: float  # used for the test predictions (best mean-over-folds score)
    fold_alphas: list[float]  # chosen by inner CV inside each outer fold (nested, honest)
    alpha_curve: dict[str, list[float]] = field(default_factory=dict)  # alpha → fold mean


def _alpha_scores(fit: RidgePath, x: np.ndarray, y: np.ndarray,
                  alphas: tuple[float, ...]) -> np.ndarray:
    """The official score of each alpha on one held-out set."""
    return np.array([score(y, fit.predict(x, a))["score"] for a in alphas])


def cv_ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
             alphas: tuple[float, ...], pca_dim: int | None = None,
             splitter: str = "blocks", target_dim: int | None = None) -> RidgeResult:
    """Nested CV: each outer fold picks alpha on the other folds, then predicts its own rows.

    The test model is fitted on all rows with the alpha whose mean per-fold score is best.
    """
    ids = np.unique(folds)
    fits: dict[frozenset, RidgePath] = {}  # inner fit without {k, j} serves both k and j

    def fit_without(held: frozenset) -> RidgePath:
        if held not in fits:
            rows = ~np.isin(folds, list(held))
            fits[held] = fit_ridge_path(x[rows], y[rows], pca_dim, target_dim)
        return fits[held]

    oof, curve, fold_alphas = np.zeros(y.shape, np.float32), [], []
    for k in ids:
        inner = np.mean([_alpha_scores(fit_without(frozenset((k, j))), x[folds == j],
                                       y[folds == j], alphas) for j in ids if j != k], axis=0)
        best = alphas[int(np.argmax(inner))]
        outer = fit_without(frozenset((k,)))
        oof[folds == k] = outer.predict(x[folds == k], best)
        curve.append(_alpha_scores(outer, x[folds == k], y[folds == k], alphas))
        fold_alphas.append(best)
    mean_curve = np.mean(curve, axis=0)
    alpha = alphas[int(np.argmax(mean_curve))]
    test_pred = fit_ridge_path(x, y, pca_dim, target_dim).predict(x_test, alpha)
    cv = score_folds(y, oof, folds, splitter)
    for parts, fold_alpha in zip(cv["folds"], fold_alphas):
        parts.update(alpha=fold_alpha, selection="nested")
    return RidgeResult(oof, test_pred, cv, alpha, fold_alphas,
                       {"alpha": list(alphas), "score": mean_curve.tolist()})


# --- retrieval ----------------------------------------------------------------------------------
# In the spirit of BLEEP: a spot's expression is the similarity-weighted mean expression of the
# training spots whose patches look most alike (cosine similarity of standardised frozen features,
# softmax weights with a temperature over the k nearest). k and the temperature are chosen by
# nested CV on the official metric, as ridge's alpha.

def neighbour_predictions(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray,
                          neighbours: tuple[int, ...],
                          temperatures: tuple[float, ...]) -> list[np.ndarray]:
    """Predictions for every (k, temperature) pair, in that order (k outer)."""
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
    scale[scale < 1e-12] = 1.0

    def unit(x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - mean) / scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    sim = unit(x_query) @ unit(x_train).T
    top = min(max(neighbours), len(x_train))
    idx = np.argpartition(-sim, top - 1, axis=1)[:, :top]
    near = np.take_along_axis(sim, idx, axis=1)
    order = np.argsort(-near, axis=1)
    idx, near = np.take_along_axis(idx, order, 1), np.take_along_axis(near, order, 1)
    out = []
    for k in neighbours:
        k = min(k, top)
        for t in temperatures:
            w = np.exp((near[:, :k] - near[:, :1]) / t)
            w /= w.sum(axis=1, keepdims=True)
            out.append(np.einsum("nk,nkg->ng", w, y_train[idx[:, :k]]).astype(np.float32))
    return out


def cv_retrieval(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
                 neighbours: tuple[int, ...], temperatures: tuple[float, ...],
                 splitter: str = "blocks") -> RecipeResult:
    """Nested CV: each outer fold picks (k, temperature) on the other folds, then predicts its
    own rows from the other folds' spots; the test set uses the pair with the best mean."""
    pairs = [(k, t) for k in neighbours for t in temperatures]

    def held_out_scores(fit_folds: list, held: int) -> np.ndarray:
        fit, rows = np.isin(folds, fit_folds), folds == held
        preds = neighbour_predictions(x[fit], y[fit], x[rows], neighbours, temperatures)
        return np.array([score(y[rows], p)["score"] for p in preds])

    choices, curve = nested_choice(folds, held_out_scores, len(pairs))
    oof = np.zeros(y.shape, np.float32)
    for held, choice in zip(np.unique(folds), choices):
        rows = folds == held
        k, t = pairs[choice]
        oof[rows] = neighbour_predictions(x[~rows], y[~rows], x[rows], (k,), (t,))[0]
    k, t = pairs[int(np.argmax(curve))]
    test_pred = neighbour_predictions(x, y, x_test, (k,), (t,))[0]
    cv = score_folds(y, oof, folds, splitter)
    for parts, choice in zip(cv["folds"], choices):
        parts.update(neighbours=pairs[choice][0], temperature=pairs[choice][1],
                     selection="nested")
    details = {"neighbours": k, "temperature": t,
               "curve": {f"{a}@{b:g}": float(s) for (a, b), s in zip(pairs, curve)}}
    return RecipeResult(oof, test_pred, cv, details)


def frozen_features(cfg: TrainConfig, data: KitData) -> tuple[dict[str, np.ndarray], bool]:
    """Train and test features of the frozen backbone (cached; D4 TTA unless TTA is off or
    SMOKE), at the configured magnification; and whether TTA was used."""
    tta = cfg.tta and not cfg.smoke
    return cached_features(data, cfg.backbone, cfg.pretrained, cfg.img_size, tta, cfg.seed,
                           cfg.batch_size, mpp=cfg.mpp, model_mpp=cfg.model_mpp,
                           mpp_fit=cfg.mpp_fit, dtype=cfg.feature_dtype, stages=cfg.feature_stages,
                           crops=cfg.feature_crops, stain_norm=cfg.stain_norm), tta


def train_retrieval(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                    splitter: str) -> RecipeResult:
    """Retrieval on the same cached frozen features as ridge."""
    features, tta = frozen_features(cfg, data)
    result = cv_retrieval(features["train"], data.y, features["test"], folds, cfg.neighbours,
                          cfg.temperatures, splitter)
    result.details.update(n_features=features["train"].shape[1], tta=tta)
    return result


def train_ridge(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                splitter: str) -> RecipeResult:
    """Frozen-feature ridge: cached features, nested-CV alpha, refit on all rows for test."""
    features, tta = frozen_features(cfg, data)
    fit = cv_ridge(features["train"], data.y, features["test"], folds, cfg.alphas, cfg.pca_dim,
                   splitter, parse_target(cfg.target))
    details = {"n_features": features["train"].shape[1], "tta": tta, "alpha": fit.alpha,
               "fold_alphas": fit.fold_alphas, "alpha_curve": fit.alpha_curve}
    return RecipeResult(fit.oof, fit.test_pred, fit.cv, details)


# --- fine-tuning: the recipe ----------------------------------------------------------------

NOT_TRAINING = ("run_dir", "overwrite", "resume", "num_workers", "devices", "data_dir")


def train_finetune(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                   splitter: str) -> RecipeResult:
    """Fine-tuned backbone + gene-group heads per fold; resumable. Every unit is trained and its
    weights kept after every epoch; then each fold's OOF predictions come from the epoch chosen
    without that fold (the best epoch of the other folds' mean validation curve) and the test
    predictions from the epoch chosen on all folds (`choose_epochs`)."""
    images, test_images = load_images(data, "train"), load_images(data, "test")
    units = plan_units(folds, resolve_groups(cfg, data, folds), cfg.group_mode)
    run = resolve(cfg.run_dir)
    checkpoints = prepare_checkpoints(run, checkpoint_settings(cfg, data), cfg.resume)
    watch = Stopwatch(checkpoints / "elapsed.json")
    devices = device_count(cfg)
    if devices > 1 and not all((checkpoints / u.name / "history.json").is_file() for u in units):
        launch_data_parallel(cfg, units, images, data.y, checkpoints, devices)
    histories = train_units(cfg, units, images, data.y, checkpoints, watch)  # done: read back
    choice = choose_epochs(units, histories)
    results = {unit.name: predict_unit(unit, cfg, images, test_images, choice[unit.name],
                                       checkpoints / unit.name, run / weights_file(unit.name))
               for unit in units}
    oof = np.zeros(data.y.shape, np.float32)
    test_pred = np.zeros((len(data.test), len(data.genes)), np.float32)
    for unit in units:
        oof[np.ix_(unit.val_idx, unit.genes)] = results[unit.name]["val_pred"]
        test_pred[:, unit.genes] += results[unit.name]["test_pred"] / len(np.unique(folds))
    history = [row for name in histories for row in histories[name]]
    cv = score_folds(data.y, oof, folds, splitter)
    annotate_epochs(cv, units, choice)
    write_outputs(cfg, data, run, units, choice, history)
    for unit in units:
        remove_epoch_weights(checkpoints / unit.name)
    details = {**run_details(cfg, units, choice, history), "elapsed_before_s": watch.before}
    return RecipeResult(oof, test_pred, cv, details)


def resolve_groups(cfg: TrainConfig, data: KitData,
                   folds: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Per fold, its gene groups (group → gene columns): one group of every gene without
    GROUPS; the groups of GENE_GROUPS for a strategy that reads no targets (prefix, file);
    otherwise the strategy recomputed on the fold's training rows with 02's settings, so no
    fold is scored with groups made from its own targets."""
    ids = [int(k) for k in np.unique(folds)]
    if not cfg.groups:
        return dict.fromkeys(ids, {"all": np.arange(len(data.genes))})
    saved = load_gene_groups(cfg.gene_groups, data.genes, cfg.groups)  # checks the file
    if cfg.groups in LABEL_FREE:
        return dict.fromkeys(ids, saved)
    settings = read_grouping_config(cfg.gene_groups)
    return {k: groups_on_rows(settings, cfg.groups, data.genes, data.y[folds != k])
            for k in ids}


def plan_units(folds: np.ndarray, groups_by_fold: dict[int, dict[str, np.ndarray]],
               group_mode: str) -> list[Unit]:
    """The models to train: one per fold ("heads") or one per fold and group ("models")."""
    units: list[Unit] = []
    for k in np.unique(folds):
        groups = groups_by_fold[int(k)]
        n_genes = sum(len(cols) for cols in groups.values())
        rows = {"train_idx": np.flatnonzero(folds != k), "val_idx": np.flatnonzero(folds == k)}
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


def checkpoint_settings(cfg: TrainConfig, data: KitData) -> dict:
    """What a checkpoint folder must have been trained with to be resumed."""
    return {**{k: v for k, v in to_dict(cfg).items() if k not in NOT_TRAINING},
            "n_train": len(data.train), "n_genes": len(data.genes), "data": data.fingerprint}


def write_outputs(cfg: TrainConfig, data: KitData, run: Path, units: list[Unit],
                  choice: dict[str, dict], history: list[dict]) -> None:
    """model.json (to rebuild every unit's model), history.json and curves.png."""
    import matplotlib.pyplot as plt

    model = {"recipe": "finetune", "backbone": cfg.backbone, "pretrained": cfg.pretrained,
             "img_size": cfg.img_size, "target": cfg.target, "group_mode": cfg.group_mode,
             "groups": cfg.groups, "gene_groups": cfg.gene_groups if cfg.groups else None,
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
    return {"group_mode": cfg.group_mode, "groups": cfg.groups,
            "n_groups": len({u.group for u in units}) if cfg.group_mode == "models"
            else len(units[0].heads), "target": cfg.target, "tta": cfg.tta and not cfg.smoke,
            "device": device.type, "amp": str(amp_dtype(device)),
            "batch_size": cfg.batch_size or train_batch_size(device),
            "train_images_per_s": round(float(np.mean(speeds)), 1) if speeds else None,
            "units": {u.name: {**choice[u.name], "epochs_run": max(
                row["epoch"] for row in history if row["unit"] == u.name)} for u in units}}


def train_units(cfg: TrainConfig, units: list[Unit], images: np.ndarray, y: np.ndarray,
                checkpoints: Path, watch: Stopwatch | None = None) -> dict[str, list[dict]]:
    """Train every unit in turn (each one's last epoch from the units before it, PATIENCE);
    returns their epoch histories. A unit trained before is read back, not trained again."""
    histories: dict[str, list[dict]] = {}
    for unit in units:
        last = stop_epoch(unit, units, histories, cfg.epochs, cfg.patience)
        histories[unit.name] = train_unit(unit, cfg, images, y, checkpoints / unit.name, last,
                                          watch)
    return histories


# --- fine-tuning: several devices -----------------------------------------------------------

def device_count(cfg: TrainConfig) -> int:
    """Data-parallel processes: DEVICES, else every visible GPU (1 without CUDA). DEVICES > 1
    on CPU runs that many gloo processes (what the tests use; no faster on a laptop)."""
    if cfg.devices is not None:
        return cfg.devices
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch_data_parallel(cfg: TrainConfig, units: list[Unit], images: np.ndarray,
                         y: np.ndarray, checkpoints: Path, devices: int) -> None:
    """Train every unit with `devices` processes through Accelerate's notebook launcher; the
    processes leave each unit's history.json and weights, as one process would."""
    from accelerate import notebook_launcher

    batch_size = cfg.batch_size or devices * train_batch_size(default_device())
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
    print(f"fine-tuning on {devices} devices, global batch {batch_size} "
          f"({batch_size // devices} per device)", flush=True)
    notebook_launcher(data_parallel_worker, (cfg, units, images, y, checkpoints),
                      num_processes=devices)


def data_parallel_worker(cfg: TrainConfig, units: list[Unit], images: np.ndarray, y: np.ndarray,
                         checkpoints: Path) -> None:
    """One process of a data-parallel run: join the process group (NCCL on GPUs, gloo on
    CPU), then train every unit in step with the others."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    watch = Stopwatch(checkpoints / "elapsed.json") if state.is_main_process else None
    train_units(cfg, units, images, y, checkpoints, watch)
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


# --- fine-tuning: one unit ------------------------------------------------------------------

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


def train_unit(unit: Unit, cfg, images: np.ndarray, y: np.ndarray, folder: Path,
               last_epoch: int, watch: Stopwatch | None = None) -> list[dict]:
    """Train one unit up to `last_epoch` (resuming from `folder/last.pt` if present), scoring its
    validation rows after every epoch (epoch 0: the starting point) and keeping that epoch's
    weights; returns the epoch history. A trained unit leaves `folder/history.json` and is not
    trained again."""
    if (folder / "history.json").is_file():
        return read_json(folder / "history.json")
    setup = setup_unit(unit, cfg, images, y, resume=(folder / "last.pt").is_file())
    step, device, batch_size = setup["step"], setup["device"], setup["batch_size"]
    state = {"history": [], "epoch": 0}
    try:
        if (folder / "last.pt").is_file():
            state = load_checkpoint(folder / "last.pt", step)
        else:
            _end_epoch(unit, cfg, step, images, y, state, {"epoch": 0}, folder)
        dataset = PatchDataset(images, setup["z"], unit.train_idx, setup["transform"])
        workers = loader_workers(cfg.num_workers, device)
        for epoch in range(state["epoch"] + 1, last_epoch + 1):
            seed = epoch_seed(cfg.seed, unit.index, epoch)
            seed_everything(seed)
            loader = make_loader(dataset, batch_size, seed, workers, device)
            start = time.perf_counter()
            stats = train_epoch(step, loader, f"{unit.name} epoch {epoch}/{last_epoch}")
            stats.update(epoch=epoch, lr=step.optimizer.param_groups[0]["lr"],
                         train_s=time.perf_counter() - start)
            _end_epoch(unit, cfg, step, images, y, state, stats, folder)
            if watch is not None:
                watch.tick()
    except RuntimeError as err:
        if is_oom(err):
            raise oom_error(err, batch_size, cfg.img_size, folder, cfg.resume) from err
        raise
    if world()[0] == 0:
        write_json(folder / "history.json", state["history"])
        remove_file(folder / "last.pt")
    wait_for_others()
    return read_json(folder / "history.json")


def stop_epoch(unit: Unit, units: list[Unit], histories: dict[str, list[dict]], epochs: int,
               patience: int | None) -> int:
    """The last epoch to train a unit: EPOCHS, or, with PATIENCE, `patience` epochs past the best
    epoch of the mean validation curve of the units of other folds trained so far (same gene
    group). Early stopping never looks at the unit's own validation rows."""
    if not patience:
        return epochs
    done = [u for u in units if u.name in histories and u.fold != unit.fold]
    same = [u for u in done if u.group == unit.group]
    others = [histories[u.name] for u in (same or done)]
    if not others:
        return epochs
    common = min(len(h) for h in others)
    curve = np.mean([[row["val_score"] for row in h[:common]] for h in others], axis=0)
    return min(epochs, int(np.argmax(curve)) + patience)


def choose_epochs(units: list[Unit], histories: dict[str, list[dict]]) -> dict[str, dict]:
    """Per unit: the epoch of its OOF predictions, chosen on the mean validation curve of the
    other folds' units of its group (nested: never on its own rows), and the epoch of its test
    predictions, chosen on the mean curve of all folds; plus its own best epoch (optimistic)."""
    choice, folds = {}, {u.fold for u in units}
    for unit in units:
        peers = [u for u in units if u.group == unit.group]
        if {u.fold for u in peers} != folds:  # fold-aware groups differ by fold: pool each fold
            peers = units
        common = min(len(histories[u.name]) for u in peers)
        curves = {fold: np.mean([[row["val_score"] for row in histories[u.name][:common]]
                                 for u in peers if u.fold == fold], axis=0)
                  for fold in sorted({u.fold for u in peers})}
        others = [curve for fold, curve in curves.items() if fold != unit.fold]
        own = np.array([row["val_score"] for row in histories[unit.name]])
        choice[unit.name] = {
            "oof_epoch": int(np.argmax(np.mean(others, axis=0))) if others else common - 1,
            "test_epoch": int(np.argmax(np.mean(list(curves.values()), axis=0))),
            "best_epoch_on_fold": int(np.argmax(own)), "best_score_on_fold": float(own.max()),
            "selection": "nested" if others else "last epoch (single fold)"}
    return choice


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


def predict_unit(unit: Unit, cfg, images: np.ndarray, test_images: np.ndarray, choice: dict,
                 folder: Path, weights: Path) -> dict:
    """Validation rows at the unit's OOF epoch and test patches at its test epoch (D4 TTA if TTA
    and not SMOKE), stored in `folder/result.npz`; the test epoch's weights become the unit's
    weights file (what model.json and 06 use)."""
    epochs = {"oof_epoch": choice["oof_epoch"], "test_epoch": choice["test_epoch"]}
    if (folder / "result.npz").is_file():
        result = load_result(folder / "result.npz")
        if {k: result[k] for k in epochs} == epochs:
            return result
    model = build_model(unit_spec(unit, cfg), pretrained=False).to(default_device())
    tta = cfg.tta and not cfg.smoke
    load_weights(model, epoch_weights(folder, choice["oof_epoch"]))
    val_pred = to_original(model, predict(model, images, unit.val_idx, tta))
    load_weights(model, epoch_weights(folder, choice["test_epoch"]))
    result = {"val_pred": val_pred,
              "test_pred": to_original(model, predict(model, test_images, None, tta)), **epochs}
    save_weights(model, weights)
    save_result(folder / "result.npz", result)
    return result


def epoch_weights(folder: Path, epoch: int) -> Path:
    """Where a unit's weights after `epoch` are kept until the run is done."""
    return folder / f"epoch{epoch}.safetensors"


def remove_epoch_weights(folder: Path) -> None:
    """Drop a finished unit's per-epoch weights (its chosen ones live on in weights/)."""
    for path in folder.glob("epoch*.safetensors"):
        path.unlink(missing_ok=True)


def setup_unit(unit: Unit, cfg, images: np.ndarray, y: np.ndarray, resume: bool) -> dict:
    """Model (targets fitted on the unit's training rows, stages frozen, heads initialised by
    ridge unless resuming), optimizer, schedule, scaler, EMA, loss and augmentation."""
    device = process_device()
    batch_size = cfg.batch_size or world()[1] * train_batch_size(device)  # the global batch
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
    optimizer = make_optimizer(model, cfg.lr, cfg.head_lr, cfg.weight_decay, cfg.layer_decay)
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps_per_epoch),
                               cfg.epochs * steps_per_epoch)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    groups = list(unit.heads.values()) if len(unit.heads) > 1 else None
    step = Stepper(model, create_loss(cfg.loss_weights, groups), optimizer, scheduler,
                   grad_scaler(device), ema, device, cfg.grad_clip, cfg.accumulate,
                   wrap_data_parallel(model, device, cfg.freeze_bn), cfg.mixup)
    return {"step": step, "device": device, "batch_size": batch_size, "z": z,
            "transform": build_augment(cfg.augment)}


def unit_spec(unit: Unit, cfg):
    """The ModelSpec of a unit: backbone, size, genes, heads and their PCA dims."""
    dims = plan_heads(unit.heads, parse_target(cfg.target), len(unit.train_idx))
    return ModelSpec(cfg.backbone, cfg.img_size, unit.genes.tolist(),
                     {k: v.tolist() for k, v in unit.heads.items()}, dims, cfg.drop_path,
                     cfg.mpp, cfg.model_mpp, cfg.mpp_fit)


def init_heads_ridge(model: GeneRegressor, features: np.ndarray, z: np.ndarray,
                     alpha: float, pca_dim: int | None = None) -> None:
    """Set every head to the ridge solution on frozen features (linear probe, then fine-tune)."""
    for head, cols in zip(model.heads, model.spec.heads.values()):
        target = z[:, cols]
        if head.decoder is not None:
            target = target @ head.decoder.cpu().numpy().T  # PCA scores
        fit = fit_ridge_path(features, target, pca_dim)
        coef = fit.components.T @ ((fit.singular / (fit.singular ** 2 + alpha))[:, None]
                                   * fit.uty)  # (features, outputs) on standardised features
        weight = coef / fit.x_scale[:, None]
        bias = fit.y_mean - fit.x_mean @ weight
        head.linear.weight.data.copy_(torch.from_numpy(weight.T.astype(np.float32)))
        head.linear.bias.data.copy_(torch.from_numpy(bias.astype(np.float32)))


def init_heads_by_ridge(model: nn.Module, cfg, images: np.ndarray, unit: Unit, z: np.ndarray,
                        y: np.ndarray) -> float:
    """Linear probe: ridge from frozen features to every head's targets (alpha by inner block
    CV on the metric over the training rows), then fine-tuning starts from it. Returns alpha."""
    rows = unit.train_idx
    features = predict(model, images, rows, features=True)
    inner = make_folds("blocks", len(rows), min(3, len(rows)))
    alpha = cv_ridge(features, y[rows][:, unit.genes], features[:1], inner, cfg.alphas,
                     cfg.pca_dim).alpha
    init_heads_ridge(model, features, z[rows], alpha, cfg.pca_dim)
    return alpha


def _end_epoch(unit: Unit, cfg, step: Stepper, images: np.ndarray, y: np.ndarray, state: dict,
               stats: dict, folder: Path) -> None:
    """Score the validation rows, keep this epoch's weights, record the epoch, checkpoint (process
    0 of a data-parallel run; the others wait for it)."""
    if world()[0] != 0:
        state["epoch"] = stats["epoch"]
        wait_for_others()
        return
    model = step.ema.module if step.ema is not None else step.model
    pred = to_original(model, predict(model, images, unit.val_idx, device=step.device))
    parts = score(y[unit.val_idx][:, unit.genes], pred)
    row = {"unit": unit.name, "fold": unit.fold, "group": unit.group, **stats,
           **{f"val_{k}": v for k, v in parts.items()}}
    state["history"].append(row)
    state["epoch"] = stats["epoch"]
    save_weights(model, epoch_weights(folder, stats["epoch"]))
    save_checkpoint(folder / "last.pt", step, state)
    print(format_epoch(row, state["history"]), flush=True)
    wait_for_others()


def format_epoch(row: dict, history: list[dict]) -> str:
    """One log line per epoch: training loss terms, validation parts, speed."""
    terms = " ".join(f"{k} {row[k]:.3g}" for k in ("mse", "pearson", "cov")
                     if row.get(k) is not None)  # a term with weight 0 is None
    speed = ""
    if "model_images_per_s" in row:  # histories from before the split show the total only
        memory = "" if row.get("gpu_memory_gb") is None else f", GPU {row['gpu_memory_gb']:.1f} GB"
        speed = (f" (loader {row['loader_images_per_s']:.0f}, model "
                 f"{row['model_images_per_s']:.1f}{memory})")
    train = "" if "loss" not in row else (
        f"loss {row['loss']:.4f} ({terms}), {row['images_per_s']:.1f} img/s{speed}; ")
    parts = " ".join(f"{k} {row['val_' + k]:.3f}" for k in ("cells", "max_gene", "heg50",
                                                              "hvg50"))
    return (f"{row['unit']} epoch {row['epoch']}: {train}val score {row['val_score']:.4f} "
            f"({parts})")


def to_original(model: nn.Module, z: np.ndarray) -> np.ndarray:
    """Standardised model outputs back on the original expression scale (numpy)."""
    return (z * model.y_std.cpu().numpy() + model.y_mean.cpu().numpy()).astype(np.float32)


def save_checkpoint(path: Path, step: Stepper, state: dict) -> None:
    """The full training state after an epoch, written atomically."""
    ckpt = {"model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "scaler": step.scaler.state_dict(),
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


# --- fine-tuning: the loop ------------------------------------------------------------------

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


def make_optimizer(model: nn.Module, lr: float, head_lr: float, weight_decay: float,
                   layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW: backbone at `lr`, heads at `head_lr`; no weight decay on biases and norms (timm's
    `param_groups_weight_decay` split); frozen parameters are left out. With `layer_decay`, the
    backbone's layers learn at lr × layer_decay^(depth from the top) (timm's
    `param_groups_layer_decay`, layers from the model's own `group_matcher`)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    groups = []
    for part, module, rate in (("backbone", model.backbone, lr), ("heads", model.heads, head_lr)):
        if part == "backbone" and layer_decay is not None and layer_decay < 1:
            parts = param_groups_layer_decay(module, weight_decay, layer_decay=layer_decay)
        else:
            parts = param_groups_weight_decay(module, weight_decay)
        for group in parts:
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                scale = group.pop("lr_scale", 1.0)
                groups.append({**group, "params": params, "lr": rate * scale, "name": part})
    return torch.optim.AdamW(groups)


def mix_batch(x: torch.Tensor, y: torch.Tensor,
              alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression mixup: each patch blended with another of the batch, and its expression
    profile with the same weight λ ~ Beta(alpha, alpha) (one λ per batch, from torch's seeded
    generator, so a resumed epoch mixes as the first did)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(x)).to(x.device)
    x = x.float()
    return lam * x + (1 - lam) * x[order], lam * y + (1 - lam) * y[order]


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
    forward: nn.Module | None = None  # what training calls: the model, or DDP around it
    mixup: float | None = None  # Beta parameter of regression mixup; None: no mixing

    def __post_init__(self):
        self.forward = self.forward or self.model


def train_epoch(step: Stepper, loader, desc: str = "train") -> dict[str, float]:
    """One pass over the loader; returns mean loss terms, training images/s overall, images/s
    of the loader alone (time waiting for batches) and of the model alone (transfer, forward,
    backward, optimizer step; CUDA synchronised so the clock sees the GPU's work) and the peak
    GPU memory in GB (None off CUDA). loader ≫ model images/s: the GPU is the limit."""
    from tqdm import tqdm

    step.forward.train()
    cuda = step.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(step.device)
    sums, n_images, start = None, 0, time.perf_counter()
    wait_s = model_s = 0.0
    bar = tqdm(loader, desc=desc, leave=False, mininterval=2)
    tick = time.perf_counter()
    processes = world()[1]
    for i, (x, y) in enumerate(bar):
        got = time.perf_counter()
        wait_s += got - tick
        x, y = x.to(step.device, non_blocking=True), y.to(step.device, non_blocking=True)
        if step.mixup:  # within this device's slice of the batch
            x, y = mix_batch(x, y, step.mixup)
        stepping = (i + 1) % step.accumulate == 0 or i + 1 == len(loader)
        sync = contextlib.nullcontext() if stepping or processes == 1 else step.forward.no_sync()
        with sync:
            with autocast(step.device):
                pred = step.forward(x)
            pred, y = gather_batch(pred.float(), y)
            loss, parts = step.loss_fn(pred, y)
            # DDP averages the processes' gradients: × processes makes that the global batch's
            step.scaler.scale(loss * processes / step.accumulate).backward()
        if stepping:
            optimizer_step(step)
        values = torch.stack([loss.detach(), *parts.values()])
        sums = values * len(y) if sums is None else sums + values * len(y)
        n_images += len(y)
        if cuda:
            torch.cuda.synchronize(step.device)
        tick = time.perf_counter()
        model_s += tick - got
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    means = (sums / max(n_images, 1)).tolist() if sums is not None else [float("nan")] * 4
    means = [None if math.isnan(m) else m for m in means]  # a term with weight 0 → None
    return {"loss": means[0], **dict(zip(("mse", "pearson", "cov"), means[1:])),
            "images_per_s": n_images / (time.perf_counter() - start),
            "loader_images_per_s": n_images / max(wait_s, 1e-9),
            "model_images_per_s": n_images / max(model_s, 1e-9),
            "gpu_memory_gb": torch.cuda.max_memory_allocated(step.device) / 1e9 if cuda
            else None}


def optimizer_step(step: Stepper) -> None:
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


# --- figures --------------------------------------------------------------------------------

def plot_folds(folds: np.ndarray, splitter: str):
    """Fold of each train row along row order: blocks show as bands, random as noise."""
    fig, ax = figure(height=1.6)
    ax.imshow(folds[None, :], aspect="auto", cmap="tab10", interpolation="nearest")
    ax.set(yticks=[], xlabel="train row", title=f"CV folds along row order ({splitter})")
    return fig


def plot_cv(cv: dict):
    """Each metric part per fold, with the mean over folds and the pooled-OOF value."""
    fig, ax = figure()
    n, width = len(cv["folds"]), 0.8 / (len(cv["folds"]) + 2)
    rows = [*(f"fold {i}" for i in range(n)), "mean", "OOF"]
    values = [*cv["folds"], cv["overall"], cv["oof"]]
    for i, (label, parts) in enumerate(zip(rows, values)):
        ax.bar(np.arange(len(KEYS)) + i * width, [parts[k] for k in KEYS], width, label=label)
    ax.set_xticks(np.arange(len(KEYS)) + width * (len(rows) - 1) / 2, KEYS)
    ax.set(ylabel="Pearson r", title=f"CV by fold ({cv['splitter']}, {n} folds)")
    ax.legend(ncols=len(rows), fontsize="small")
    return fig


def plot_gene_r(y: np.ndarray, oof: np.ndarray, folds: np.ndarray):
    """Per-gene r of out-of-fold predictions (fold-wise mean), scored genes marked."""
    ids = np.unique(folds)
    r = np.mean([pearson_genes(y[folds == k], oof[folds == k]) for k in ids], axis=0)
    floor = np.mean([max_gene_floor(y[folds == k], oof[folds == k]) for k in ids])
    top = top_genes(y)
    fig, ax = figure()
    bins = np.linspace(min(r.min(), 0), max(r.max(), 0.1), 40)
    ax.hist(r, bins=bins, color="lightgray", label=f"all {len(r)} genes")
    ax.hist(r[top["heg50"]], bins=bins, alpha=0.7, label="50 most expressed")
    ax.hist(r[top["hvg50"]], bins=bins, alpha=0.7, label="50 most variable")
    ax.axvline(floor, color="k", ls="--", label=f"max-gene noise floor {floor:.2f}")
    ax.set(xlabel="per-gene Pearson r (mean over folds)", ylabel="genes", yscale="log")
    ax.legend(fontsize="small")
    return fig


def plot_alpha_curve(curve: dict):
    """Mean per-fold score against the ridge strength alpha."""
    fig, ax = figure(width=5)
    ax.semilogx(curve["alpha"], curve["score"], "o-")
    best = int(np.argmax(curve["score"]))
    ax.axvline(curve["alpha"][best], color="k", ls=":", label=f"best {curve['alpha'][best]:g}")
    ax.set(xlabel="alpha", ylabel="score (mean over folds)", title="ridge strength")
    ax.legend()
    return fig


def plot_history(history: list[dict], choice: dict[str, dict] | None = None):
    """Training loss and validation score per epoch, one line per unit; ★ marks the epoch a
    unit's OOF predictions come from (chosen on the other folds' curves), ○ its own best."""
    fig, (left, right) = figure(10, 3.5, ncols=2)
    for name in dict.fromkeys(row["unit"] for row in history):
        rows = [row for row in history if row["unit"] == name]
        trained = [row for row in rows if "loss" in row]
        left.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", ms=3,
                  label=name)
        epochs, scores = [r["epoch"] for r in rows], [r["val_score"] for r in rows]
        line, = right.plot(epochs, scores, "o-", ms=3, label=name)
        best = int(np.argmax(scores))
        right.plot(epochs[best], scores[best], "o", ms=10, mfc="none", color=line.get_color())
        if choice and name in choice:
            pick = epochs.index(choice[name]["oof_epoch"])
            right.plot(epochs[pick], scores[pick], "*", ms=12, color=line.get_color())
    left.set(xlabel="epoch", ylabel="training loss", title="loss (mean over the epoch)")
    right.set(xlabel="epoch (0: before training)", ylabel="official score",
              title="validation score (★ epoch chosen without this fold, ○ own best)")
    right.legend(fontsize="small", ncols=2)
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


RECIPES: dict[str, Callable[[TrainConfig, KitData, np.ndarray, str], RecipeResult]] = {
    "ridge": train_ridge,
    "finetune": train_finetune,
    "retrieval": train_retrieval,
}
