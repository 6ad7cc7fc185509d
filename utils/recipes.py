"""Training recipes by name; each turns (config, data, folds) into a finished run folder.

`ridge` — frozen timm features (D4 TTA) → standardise → optional PCA → ridge (utils.ridge).
`finetune` — a timm backbone fine-tuned per fold with gene-group heads (utils.finetune).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from utils.config import TrainConfig, to_dict
from utils.cv import make_folds, read_groups
from utils.data import KitData
from utils.io import as_json
from utils.runs import Run, is_complete, load_run, save_run


@dataclass
class RecipeResult:
    """What a recipe returns: predictions on the original scale, CV report, recipe details."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    details: dict = field(default_factory=dict)


def train_ridge(cfg: TrainConfig, data: KitData, folds: np.ndarray) -> RecipeResult:
    """Frozen-feature ridge: cached features, nested-CV alpha, refit on all rows for test."""
    from utils.backbones import cached_features
    from utils.ridge import cv_ridge

    tta = cfg.tta and not cfg.smoke
    features = cached_features(data, cfg.backbone, cfg.pretrained, cfg.img_size, tta,
                               cfg.seed, cfg.batch_size)
    fit = cv_ridge(features["train"], data.y, features["test"], folds, cfg.alphas, cfg.pca_dim,
                   cfg.cv)
    details = {"n_features": features["train"].shape[1], "tta": tta, "alpha": fit.alpha,
               "fold_alphas": fit.fold_alphas, "alpha_curve": fit.alpha_curve}
    return RecipeResult(fit.oof, fit.test_pred, fit.cv, details)


def train_finetune(cfg: TrainConfig, data: KitData, folds: np.ndarray) -> RecipeResult:
    """Fine-tuned backbone + gene-group heads per fold, early-stopped on the metric; resumable."""
    from utils.finetune import run_finetune

    return run_finetune(cfg, data, folds)


RECIPES: dict[str, Callable[[TrainConfig, KitData, np.ndarray], RecipeResult]] = {
    "ridge": train_ridge,
    "finetune": train_finetune,
}


def list_recipes() -> list[str]:
    """Names accepted by RECIPE."""
    return sorted(RECIPES)


def make_cv_folds(cfg: TrainConfig, data: KitData) -> np.ndarray:
    """The fold of every train row for the configured splitter."""
    groups = read_groups(cfg.cv, data.train, data.root)
    return make_folds(cfg.cv, len(data.train), cfg.n_folds, cfg.seed, groups)


def train(cfg: TrainConfig, data: KitData, folds: np.ndarray) -> Run:
    """Run the configured recipe and save its run folder; reuse a finished identical run."""
    if is_complete(cfg.run_dir) and not cfg.overwrite:
        run = load_run(cfg.run_dir)
        changed = {k: (run.config.get(k), v) for k, v in as_json(to_dict(cfg)).items()
                   if k != "overwrite" and run.config.get(k) != v}
        if changed:
            raise FileExistsError(f"{run.path} holds a run with other parameters "
                                  f"(saved, now): {changed}; set OVERWRITE=True or a new RUN_DIR")
        print(f"{run.path} is already trained with these parameters: loaded it "
              "(OVERWRITE=True retrains)")
        return run
    start = time.perf_counter()
    result = RECIPES[cfg.recipe](cfg, data, folds)
    config = {**to_dict(cfg), "data_root": str(data.root), "n_train": len(data.train),
              "n_test": len(data.test), "n_genes": len(data.genes), "details": result.details,
              "elapsed_s": round(time.perf_counter() - start, 1), "peak_rss_gb": peak_rss_gb()}
    save_run(cfg.run_dir, config, folds, result.oof, result.test_pred, result.cv)
    return load_run(cfg.run_dir)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB); NaN on Windows."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
