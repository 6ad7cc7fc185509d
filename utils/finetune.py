"""The `finetune` recipe: fine-tune a timm backbone on every CV fold, per gene group if asked.

Per fold, one model (GROUP_MODE="heads": one backbone, one head per gene group) or one model per
gene group (GROUP_MODE="models", the seed team's way) is trained by `utils.units.fit_unit`. The
recipe assembles the out-of-fold predictions, averages the folds' test predictions and writes,
besides the run files that `utils.recipes.train` writes:

    RUN_DIR/model.json              how to rebuild every trained model (`models.load_unit_model`)
    RUN_DIR/weights/<unit>.safetensors   best weights of each unit (fold0, or fold0-<group>)
    RUN_DIR/history.json            one row per unit and epoch: loss terms, validation parts
    RUN_DIR/curves.png              training loss and validation score per epoch
    RUN_DIR/checkpoints/            settings.json, and per unit last.pt (training state, removed
                                    when the unit is done) and result.npz (its predictions)

This module imports torch and timm; `import utils` does not import it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from utils.config import TrainConfig, to_dict
from utils.data import KitData
from utils.io import as_json, read_json, write_json
from utils.paths import resolve
from utils.plots import figure, save_figure
from utils.recipes import RecipeResult
from utils.units import Unit, fit_unit, unit_spec

NOT_TRAINING = ("run_dir", "overwrite", "resume", "num_workers", "data_dir")


def run_finetune(cfg: TrainConfig, data: KitData, folds: np.ndarray) -> RecipeResult:
    """Train (or resume) every unit, then assemble OOF and fold-averaged test predictions."""
    from utils.cv import score_folds
    from utils.data import load_images

    images, test_images = load_images(data, "train"), load_images(data, "test")
    groups = resolve_groups(cfg, data.genes)
    units = plan_units(folds, groups, cfg.group_mode)
    run = resolve(cfg.run_dir)
    checkpoints = prepare_checkpoints(cfg, run, len(data.train), len(data.genes))
    results = {unit.name: fit_unit(unit, cfg, images, test_images, data.y,
                                   checkpoints / unit.name, run / weights_file(unit))
               for unit in units}
    oof = np.zeros(data.y.shape, np.float32)
    test_pred = np.zeros((len(data.test), len(data.genes)), np.float32)
    for unit in units:
        oof[np.ix_(unit.val_idx, unit.genes)] = results[unit.name]["val_pred"]
        test_pred[:, unit.genes] += results[unit.name]["test_pred"] / len(np.unique(folds))
    history = [row for result in results.values() for row in result["history"]]
    write_outputs(cfg, data, run, units, results, history)
    return RecipeResult(oof, test_pred, score_folds(data.y, oof, folds, cfg.cv),
                        run_details(cfg, units, results, history))


def resolve_groups(cfg: TrainConfig, genes: list[str]) -> dict[str, np.ndarray]:
    """Gene groups of the GROUPS strategy in GENE_GROUPS, or one group of every gene."""
    if not cfg.groups:
        return {"all": np.arange(len(genes))}
    from utils.genes import load_gene_groups

    return load_gene_groups(cfg.gene_groups, genes, cfg.groups)


def plan_units(folds: np.ndarray, groups: dict[str, np.ndarray], group_mode: str) -> list[Unit]:
    """The models to train: one per fold ("heads") or one per fold and group ("models")."""
    n_genes = sum(len(cols) for cols in groups.values())
    units: list[Unit] = []
    for k in np.unique(folds):
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


def weights_file(unit: Unit) -> str:
    """Where a unit's best weights go, relative to the run folder."""
    return f"weights/{unit.name}.safetensors"


def prepare_checkpoints(cfg: TrainConfig, run: Path, n_train: int, n_genes: int) -> Path:
    """The checkpoint folder: kept to resume an unfinished run with the same settings, cleared
    for a fresh start (RESUME=False, or retraining a finished run with OVERWRITE=True)."""
    from utils.runs import is_complete

    folder = run / "checkpoints"
    settings = {**{k: v for k, v in to_dict(cfg).items() if k not in NOT_TRAINING},
                "n_train": n_train, "n_genes": n_genes}
    settings = as_json(settings)
    if not cfg.resume or is_complete(run):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(run / "weights", ignore_errors=True)
    saved = folder / "settings.json"
    if saved.is_file() and read_json(saved) != settings:
        old = read_json(saved)
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise ValueError(f"{folder} holds checkpoints of an unfinished run with other settings "
                         f"(saved, now): {changed}. Set RESUME=False to start over, or use "
                         "another RUN_DIR")
    write_json(saved, settings)
    return folder


def write_outputs(cfg: TrainConfig, data: KitData, run: Path, units: list[Unit],
                  results: dict, history: list[dict]) -> None:
    """model.json (to rebuild every unit's model), history.json and curves.png."""
    import matplotlib.pyplot as plt

    model = {"recipe": "finetune", "backbone": cfg.backbone, "pretrained": cfg.pretrained,
             "img_size": cfg.img_size, "target": cfg.target, "group_mode": cfg.group_mode,
             "groups": cfg.groups, "gene_groups": cfg.gene_groups if cfg.groups else None,
             "genes": data.genes,
             "units": {u.name: {"fold": u.fold, "group": u.group,
                                "spec": unit_spec(u, cfg).to_dict(), "weights": weights_file(u),
                                "best_epoch": results[u.name]["best_epoch"],
                                "best_score": results[u.name]["best_score"]} for u in units}}
    write_json(run / "model.json", model)
    write_json(run / "history.json", history)
    fig = plot_history(history)
    save_figure(fig, run, "curves")
    plt.close(fig)


def run_details(cfg: TrainConfig, units: list[Unit], results: dict,
                history: list[dict]) -> dict:
    """What config.json records about the fine-tuning beyond the parameters."""
    from utils.backbones import amp_dtype, default_device
    from utils.train import train_batch_size

    device = default_device()
    speeds = [row["images_per_s"] for row in history if "images_per_s" in row]
    return {"group_mode": cfg.group_mode, "groups": cfg.groups,
            "n_groups": len({u.group for u in units}) if cfg.group_mode == "models"
            else len(units[0].heads), "target": cfg.target, "tta": cfg.tta and not cfg.smoke,
            "device": device.type, "amp": str(amp_dtype(device)),
            "batch_size": cfg.batch_size or train_batch_size(device),
            "train_images_per_s": round(float(np.mean(speeds)), 1) if speeds else None,
            "units": {name: {"best_epoch": r["best_epoch"], "best_score": r["best_score"],
                             "epochs_run": max(row["epoch"] for row in r["history"])}
                      for name, r in results.items()}}


def load_history(run_dir: str | Path) -> list[dict]:
    """The per-epoch history of a fine-tuning run folder."""
    return read_json(resolve(run_dir) / "history.json")


def plot_history(history: list[dict]):
    """Training loss and validation score per epoch, one line per unit, best epochs marked."""

    fig, (left, right) = figure(10, 3.5, ncols=2)
    for name in dict.fromkeys(row["unit"] for row in history):
        rows = [row for row in history if row["unit"] == name]
        trained = [row for row in rows if "loss" in row]
        left.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", ms=3,
                  label=name)
        epochs, scores = [r["epoch"] for r in rows], [r["val_score"] for r in rows]
        line, = right.plot(epochs, scores, "o-", ms=3, label=name)
        best = int(np.argmax(scores))
        right.plot(epochs[best], scores[best], "*", ms=12, color=line.get_color())
    left.set(xlabel="epoch", ylabel="training loss", title="loss (mean over the epoch)")
    right.set(xlabel="epoch (0: before training)", ylabel="official score",
              title="validation score (★ best: weights kept)")
    right.legend(fontsize="small", ncols=2)
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig
