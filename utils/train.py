"""05_train: training recipes by name, each turning (config, data, folds) into a run folder.

`ridge` — frozen timm features (D4 TTA; `TrainConfig.feature_spec`, cached by `utils.features`)
→ standardise → optional PCA → ridge. One SVD per training set gives the ridge solution for every
alpha at once (the same solution as sklearn's `Ridge(alpha)` on standardised features; a test
checks it), so choosing alpha by nested CV on the official metric costs little.

`retrieval` — the same cached features; a spot's expression is the similarity-weighted mean of
its nearest training spots' (N_NEAREST and TEMPERATURES chosen by nested CV).

`finetune` — a timm backbone fine-tuned on every CV fold. Per fold, one model (GROUP_MODE=
"heads": one backbone, one head per gene group) or one model per gene group (GROUP_MODE=
"models", the DACON winners' way) is a *unit* (`utils.units`). `train_unit` fits the unit's target
scaling on its training rows, optionally starts the heads from a ridge linear probe, and trains
on the kit's loop (`utils.loop`: AdamW, warmup + cosine, mixed precision, gradient accumulation,
clipping, EMA, checkpoints and resume, data parallel over DEVICES), scoring the validation rows
after every epoch (epoch 0 is the starting point) and keeping every epoch's weights. With
PATIENCE a unit also scores its *stopping rows* (the last 15 % of each training fold's rows, held
out of its training), stops when they have not improved for PATIENCE epochs and takes its OOF
epoch from them: nothing a fold's OOF predictions depend on reads that fold's labels
(tests/conftest.assert_label_invariant checks it). A killed run resumed from its last checkpoint
ends exactly as an uninterrupted one. Besides the run files (`utils.runs`) it writes model.json,
weights/, history.json, curves.png and checkpoints/.
This module imports torch; `import utils` does not import it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.augment import build_augment, read_policy
from utils.config import TrainConfig, to_dict
from utils.cv import (
    INNER_BLOCKS,
    inner_folds,
    make_folds,
    nested_choice_on_rows,
    read_fold_file,
    score_folds,
    selection_rule,
    split_rows,
)
from utils.data import DataError, KitData, PatchDataset, load_images
from utils.duplicates import find_duplicates
from utils.features import cached_features
from utils.files import InputOutputError, read_json, remove_file, write_json
from utils.genes import LABEL_FREE, groups_on_rows, load_gene_groups, read_grouping_settings
from utils.loop import (
    Stepper,
    close_epoch,
    data_parallel_process,
    device_count,
    epoch_seed,
    grad_scaler,
    is_oom,
    launch_data_parallel,
    load_checkpoint,
    loader_workers,
    make_optimizer,
    make_scheduler,
    oom_error,
    process_device,
    run_epochs,
    train_batch_size,
    wait_for_others,
    world,
    wrap_data_parallel,
)
from utils.losses import create_loss
from utils.metric import KEYS, max_gene_floor, pearson_genes, score, top_genes
from utils.models import GeneRegressor, build_model, freeze_blocks, set_targets
from utils.places import resolve
from utils.plots import figure
from utils.runs import (
    Run,
    Stopwatch,
    claim_run_dir,
    is_complete,
    load_run,
    peak_rss_gb,
    prepare_checkpoints,
    replace_run,
    reuse_run,
    run_lock,
    save_run,
    staging_dir,
    weights_file,
)
from utils.units import (
    Unit,
    annotate_epochs,
    plan_units,
    predict,
    predict_unit,
    remove_epoch_weights,
    run_details,
    score_epoch,
    unit_spec,
    write_outputs,
)


@dataclass
class RecipeResult:
    """What a recipe returns: predictions on the original scale, CV report, recipe details."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    details: dict = field(default_factory=dict)


MIN_FOLD_ROWS = 2  # rows a validation fold needs for its Pearson correlations


def make_cv_folds(cfg: TrainConfig, data: KitData) -> tuple[np.ndarray, str]:
    """The fold of every train row and the splitter actually used (CV='slices' falls back to
    blocks, with a warning, when the rows show no slice structure), duplicate train patches in
    one fold; prints the duplicate audit's line and how the folds were made."""
    labels = read_fold_file(cfg.cv, data.train, data.root)
    duplicates = find_duplicates(data)
    print(duplicates.summary())
    folds, splitter, note = split_rows(cfg.cv, data.y, cfg.n_folds, cfg.seed, labels,
                                       duplicates.train_groups())
    sizes = np.unique(folds, return_counts=True)[1]
    if sizes.min() < MIN_FOLD_ROWS:
        raise DataError(f"train.csv has {len(data.train)} rows: CV={splitter!r} made "
                        f"{len(sizes)} folds, the smallest of {sizes.min()} rows, and a fold "
                        f"needs {MIN_FOLD_ROWS} to be scored (a per-gene correlation); use "
                        "fewer folds (N_FOLDS) or more training rows")
    print(note)
    return folds, splitter


def train(cfg: TrainConfig, data: KitData, folds: np.ndarray, splitter: str | None = None) -> Run:
    """Run the configured recipe on `folds` and save its run folder (`splitter` names them in
    cv.json; default CV) under the folder's lock; reuse a finished identical run. Retraining a
    finished run (OVERWRITE) happens in `.next/` inside it, moved in only once complete."""
    if cfg.recipe == "finetune":
        read_policy(cfg.augment)  # a missing or broken AUGMENT file fails now, not after hours
    folder = claim_run_dir(cfg.run_dir)
    check_inputs_outside(cfg, folder)
    with run_lock(folder):
        if is_complete(staging_dir(folder)):  # an OVERWRITE stopped while moving its run in
            replace_run(folder)
        run = None if cfg.overwrite else reuse_run(folder, to_dict(cfg), data)
        if run is not None:
            print(f"{run.path} is already trained with these parameters: loaded it "
                  "(OVERWRITE=True retrains)")
            return run
        # retraining a finished run: the new one is made in .next/ (the old one stays finished)
        target = staging_dir(folder) if is_complete(folder) or staging_dir(
            folder).is_dir() else folder
        start = time.perf_counter()
        recipe = RECIPES[cfg.recipe]
        result = (train_finetune(cfg, data, folds, splitter or cfg.cv, target)
                  if recipe is train_finetune else recipe(cfg, data, folds, splitter or cfg.cv))
        earlier = result.details.pop("elapsed_before_s", 0.0)  # a resumed run's earlier processes
        config = {**to_dict(cfg), "data_root": str(data.root), "n_train": len(data.train),
                  "n_test": len(data.test), "n_genes": len(data.genes), "details": result.details,
                  "data_fingerprint": data.fingerprint,
                  "elapsed_s": round(earlier + time.perf_counter() - start, 1),
                  "peak_rss_gb": peak_rss_gb()}
        save_run(target, config, folds, result.oof, result.test_pred, result.cv)
        if target != folder:
            replace_run(folder)
        return load_run(folder)


def check_inputs_outside(cfg: TrainConfig, folder: Path) -> None:
    """The run's input files (PRETRAINED, GENE_GROUPS, AUGMENT) lie outside its run folder, or
    an InputOutputError naming the parameter: retraining clears the folder's weights."""
    files = {"PRETRAINED": cfg.pretrained, "GENE_GROUPS": cfg.gene_groups,
             "AUGMENT": cfg.augment}
    for name, value in files.items():
        path = resolve(value).resolve() if isinstance(value, str) and value else None
        if path is not None and path.is_file() and folder.resolve() in path.parents:
            raise InputOutputError(f"{name}={value!r} is inside RUN_DIR {folder}, which this "
                                   "run writes (and whose weights it clears when it retrains); "
                                   f"copy it out of the run folder, or choose another RUN_DIR")


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
    target_axes: np.ndarray | None = None  # (K, g) with target_dim: the targets' top-K axes
    y_scale: np.ndarray | None = None  # (g,) with target_dim: the scale the axes are in

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """Predictions (n, genes) on the original target scale for one alpha."""
        return self.predict_projected(self.project(x), alpha)

    def project(self, x: np.ndarray) -> np.ndarray:
        """x standardised and projected on the kept singular directions (n, k)."""
        return ((x - self.x_mean) / self.x_scale) @ self.components.T

    def predict_projected(self, z: np.ndarray, alpha: float) -> np.ndarray:
        """`predict` from `project(x)` (paths fitted on one x share it)."""
        shrink = self.singular / (self.singular ** 2 + alpha)
        return ((z * shrink) @ self.uty + self.y_mean).astype(np.float32)

    def component_scores(self, y: np.ndarray) -> np.ndarray:
        """Scores (n, K) of targets on the target axes (what the ridge on target PCs predicts)."""
        return ((y - self.y_mean) / self.y_scale) @ self.target_axes.T

    def predict_components(self, x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Predicted target-axis scores: (n, K) for one alpha per axis (K,), or (A, n, K) for
        each of A alphas per axis (A, K)."""
        z = ((x - self.x_mean) / self.x_scale) @ self.components.T
        coef = (self.uty / self.y_scale) @ self.target_axes.T  # (k, K)
        alphas = np.asarray(alphas, np.float64)
        shrink = self.singular[:, None] / (self.singular[:, None] ** 2 + alphas[..., None, :])
        return np.einsum("nk,...kc->...nc", z, shrink * coef)

    def predict_per_component(self, x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Predictions (n, genes) with the ridge of target axis c at strength alphas[c]."""
        scores = self.predict_components(x, alphas)
        return ((scores @ self.target_axes) * self.y_scale + self.y_mean).astype(np.float32)


def gram_svd(a: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD (u, s, vt) of a, largest first, from the eigendecomposition of its smaller Gram
    matrix (a's rows' or columns'): 4x faster than LAPACK's SVD on the wide and tall matrices
    ridge fits (and 8x for the top few, `k`), the same values to float precision
    (benchmarks/results/speed.csv). Directions with s below 1e-6 of the largest are dropped: their
    squared singular values are below the Gram's float precision, and a ridge with any alpha
    in ALPHAS' range gives them no weight."""
    from scipy.linalg import eigh

    wide = a.shape[0] < a.shape[1]
    gram = a @ a.T if wide else a.T @ a
    m = len(gram)
    top = None if k is None or k >= m else [m - k, m - 1]
    lam, vec = eigh(gram, subset_by_index=top, driver="evr" if top else "evd",
                    overwrite_a=True, check_finite=False)
    lam, vec = lam[::-1], vec[:, ::-1]
    keep = lam > max(lam[0], 0.0) * 1e-12
    s, vec = np.sqrt(lam[keep]), vec[:, keep]
    if wide:
        return vec, s, (vec.T @ a) / s[:, None]
    return (a @ vec) / s, s, vec.T


def fit_ridge_path(x: np.ndarray, y: np.ndarray, pca_dim: int | None = None,
                   target_dim: int | None = None) -> RidgePath:
    """Standardise x, take its SVD (keeping `pca_dim` components if set), project y.

    `target_dim` (TARGET="pca:K"): ridge on the top-K principal components of the standardised
    targets of these rows, decoded back to every gene (the rest is treated as noise).
    """
    return fit_ridge_paths(x, [y], pca_dim, target_dim)[0]


def fit_ridge_paths(x: np.ndarray, ys: list[np.ndarray], pca_dim: int | None = None,
                    target_dim: int | None = None) -> list[RidgePath]:
    """`fit_ridge_path` of x to each of several targets, through one SVD of x."""
    x = np.asarray(x, dtype=np.float64)
    x_mean, x_scale = x.mean(axis=0), x.std(axis=0)
    x_scale[x_scale < 1e-12] = 1.0
    u, s, vt = gram_svd((x - x_mean) / x_scale, pca_dim)
    return [path_on_targets((x_mean, x_scale, u, s, vt), y, target_dim) for y in ys]


def path_on_targets(svd: tuple, y: np.ndarray, target_dim: int | None) -> RidgePath:
    """A RidgePath of targets y from the standardised SVD (mean, scale, u, s, vt) of x."""
    x_mean, x_scale, u, s, vt = svd
    y_mean = y.mean(axis=0, dtype=np.float64)
    uty = u.T @ (y - y_mean)
    if target_dim is None:
        return RidgePath(x_mean, x_scale, y_mean, vt, s, uty)
    y_scale = y.std(axis=0, dtype=np.float64)  # ridge is linear in y: fitting the PCs =
    y_scale[y_scale < 1e-12] = 1.0  # projecting onto them
    axes = gram_svd((y - y_mean) / y_scale, target_dim)[2]
    uty = ((uty / y_scale) @ axes.T @ axes) * y_scale
    return RidgePath(x_mean, x_scale, y_mean, vt, s, uty, axes, y_scale)


@dataclass
class RidgeResult:
    """Out-of-fold and test predictions, the CV report and how alpha was chosen."""

    oof: np.ndarray
    test_pred: np.ndarray
    cv: dict
    alpha: float | list[float]  # used for the test predictions (best mean-over-folds score;
    # with ALPHA_PER_COMPONENT one per target PC)
    fold_alphas: list  # chosen by inner CV inside each outer fold (nested, honest)
    alpha_curve: dict[str, list[float]] = field(default_factory=dict)  # alpha → fold mean


def _alpha_scores(fit: RidgePath, x: np.ndarray, y: np.ndarray,
                  alphas: tuple[float, ...]) -> np.ndarray:
    """The official score of each alpha on one held-out set."""
    return np.array([score(y, fit.predict(x, a))["score"] for a in alphas])


def ridge_fits(x: np.ndarray, y: np.ndarray, pca_dim: int | None = None,
               target_dim: int | None = None) -> Callable[[np.ndarray], RidgePath]:
    """`fit_on(rows)`: the ridge path fitted on a boolean mask of rows, each mask fitted once
    (in nested CV an inner fit without folds {k, j} serves both k and j)."""
    fits: dict[bytes, RidgePath] = {}

    def fit_on(rows: np.ndarray) -> RidgePath:
        key = np.packbits(rows).tobytes()
        if key not in fits:
            fits[key] = fit_ridge_path(x[rows], y[rows], pca_dim, target_dim)
        return fits[key]

    return fit_on


def cv_ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
             alphas: tuple[float, ...], pca_dim: int | None = None,
             splitter: str = "blocks", target_dim: int | None = None) -> RidgeResult:
    """Nested CV: each outer fold picks alpha on the other folds (with 2 folds: on contiguous
    blocks of the other fold, `nested_choice_on_rows`), then predicts its own rows.

    The test model is fitted on all rows with the alpha whose mean per-fold score is best.
    """
    fit_on = ridge_fits(x, y, pca_dim, target_dim)

    def held_out_scores(fit_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        return _alpha_scores(fit_on(fit_rows), x[held_rows], y[held_rows], alphas)

    choices, mean_curve = nested_choice_on_rows(folds, held_out_scores, len(alphas))
    oof, fold_alphas = np.zeros(y.shape, np.float32), [alphas[c] for c in choices]
    for k, best in zip(np.unique(folds), fold_alphas):
        oof[folds == k] = fit_on(folds != k).predict(x[folds == k], best)
    alpha = alphas[int(np.argmax(mean_curve))]
    test_pred = fit_ridge_path(x, y, pca_dim, target_dim).predict(x_test, alpha)
    cv = score_folds(y, oof, folds, splitter)
    rule = selection_rule(folds, len(alphas), on_rows=True)
    for parts, fold_alpha in zip(cv["folds"], fold_alphas):
        parts.update(alpha=fold_alpha, selection=rule)
    return RidgeResult(oof, test_pred, cv, alpha, fold_alphas,
                       {"alpha": list(alphas), "score": mean_curve.tolist()})


def nested_component_choice(folds: np.ndarray,
                            held_out_errors: Callable[[np.ndarray, np.ndarray], np.ndarray]
                            ) -> tuple[list[np.ndarray], np.ndarray]:
    """`nested_choice_on_rows` with one choice per target axis: `held_out_errors(fit_rows,
    held_rows)` is the (candidates, K) held-out error of every candidate on every axis; each
    outer fold takes, per axis, the candidate with the least mean error over its inner folds
    (never its own rows). Returns the per-fold choices (K,) and the mean outer curve."""
    choices, curve = [], []
    for k in np.unique(folds):
        inner = inner_folds(folds, k)
        errors = [held_out_errors((inner >= 0) & (inner != j), inner == j)
                  for j in np.unique(inner[inner >= 0])]
        choices.append(np.argmin(np.mean(errors, axis=0), axis=0))
        curve.append(held_out_errors(folds != k, folds == k))
    return choices, np.mean(curve, axis=0)


def cv_ridge_per_component(x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                           folds: np.ndarray, alphas: tuple[float, ...], pca_dim: int | None,
                           splitter: str, target_dim: int) -> RidgeResult:
    """`cv_ridge` on the top `target_dim` target PCs with one alpha per PC
    (ALPHA_PER_COMPONENT): each outer fold picks, per PC, the alpha with the least held-out
    squared error of that PC's scores over its inner folds (`nested_component_choice`); the
    test model takes per PC the alpha with the least mean error over the outer folds."""
    fit_on = ridge_fits(x, y, pca_dim, target_dim)
    grid = np.asarray(alphas, np.float64)

    def held_out_errors(fit_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        fit = fit_on(fit_rows)
        n_axes = len(fit.target_axes)
        pred = fit.predict_components(x[held_rows], np.repeat(grid[:, None], n_axes, axis=1))
        return ((pred - fit.component_scores(y[held_rows])) ** 2).mean(axis=1)

    choices, curve = nested_component_choice(folds, held_out_errors)
    oof = np.zeros(y.shape, np.float32)
    fold_alphas = [grid[c].tolist() for c in choices]
    for k, chosen in zip(np.unique(folds), fold_alphas):
        oof[folds == k] = fit_on(folds != k).predict_per_component(x[folds == k], chosen)
    alpha = grid[np.argmin(curve, axis=0)].tolist()
    test_pred = fit_ridge_path(x, y, pca_dim, target_dim).predict_per_component(x_test, alpha)
    cv = score_folds(y, oof, folds, splitter)
    for parts, fold_alpha in zip(cv["folds"], fold_alphas):
        parts.update(alpha=fold_alpha, selection=selection_rule(folds, 2, on_rows=True))
    return RidgeResult(oof, test_pred, cv, alpha, fold_alphas,
                       {"alpha": list(alphas), "component_mse": curve.tolist()})


# --- retrieval ----------------------------------------------------------------------------------
# In the spirit of BLEEP: a spot's expression is the similarity-weighted mean expression of the
# training spots whose patches look most alike (cosine similarity of standardised frozen features,
# softmax weights with a temperature over the k nearest). k and the temperature are chosen by
# nested CV on the official metric, as ridge's alpha.

def nearest_predictions(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray,
                        n_nearest: tuple[int, ...],
                        temperatures: tuple[float, ...]) -> list[np.ndarray]:
    """Predictions for every (k, temperature) pair, in that order (k outer)."""
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
    scale[scale < 1e-12] = 1.0

    def unit(x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - mean) / scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    sim = unit(x_query) @ unit(x_train).T
    top = min(max(n_nearest), len(x_train))
    idx = np.argpartition(-sim, top - 1, axis=1)[:, :top]
    near = np.take_along_axis(sim, idx, axis=1)
    order = np.argsort(-near, axis=1)
    idx, near = np.take_along_axis(idx, order, 1), np.take_along_axis(near, order, 1)
    out = []
    for k in n_nearest:
        k = min(k, top)
        for t in temperatures:
            w = np.exp((near[:, :k] - near[:, :1]) / t)
            w /= w.sum(axis=1, keepdims=True)
            out.append(np.einsum("nk,nkg->ng", w, y_train[idx[:, :k]]).astype(np.float32))
    return out


def cv_retrieval(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
                 n_nearest: tuple[int, ...], temperatures: tuple[float, ...],
                 splitter: str = "blocks") -> RecipeResult:
    """Nested CV: each outer fold picks (k, temperature) on the other folds (with 2 folds: on
    blocks of the other fold), then predicts its own rows from the other folds' spots; the test
    set uses the pair with the best mean."""
    pairs = [(k, t) for k in n_nearest for t in temperatures]

    def held_out_scores(fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
        preds = nearest_predictions(x[fit], y[fit], x[rows], n_nearest, temperatures)
        return np.array([score(y[rows], p)["score"] for p in preds])

    choices, curve = nested_choice_on_rows(folds, held_out_scores, len(pairs))
    oof = np.zeros(y.shape, np.float32)
    for held, choice in zip(np.unique(folds), choices):
        rows = folds == held
        k, t = pairs[choice]
        oof[rows] = nearest_predictions(x[~rows], y[~rows], x[rows], (k,), (t,))[0]
    k, t = pairs[int(np.argmax(curve))]
    test_pred = nearest_predictions(x, y, x_test, (k,), (t,))[0]
    cv = score_folds(y, oof, folds, splitter)
    for parts, choice in zip(cv["folds"], choices):
        parts.update(n_nearest=pairs[choice][0], temperature=pairs[choice][1],
                     selection=selection_rule(folds, len(pairs), on_rows=True))
    details = {"n_nearest": k, "temperature": t,
               "curve": {f"{a}@{b:g}": float(s) for (a, b), s in zip(pairs, curve)}}
    return RecipeResult(oof, test_pred, cv, details)


# --- retrieval plus a residual ridge (RECIPE="retrieval_ridge") ---------------------------------
# After CHRep: the retrieval estimate, corrected by a ridge fitted on its residuals. A training
# row's residual is its label minus the retrieval estimate from the *other* groups' rows (its
# slice's rows never vote for it, as a test spot's slice never does), so the residual model
# learns how retrieval errs on unseen slices; the ridge strength bounds the correction.

def residual_groups(groups: np.ndarray) -> np.ndarray:
    """Groups for the leave-group-out retrieval estimates of fit rows: their folds, or, when
    they are one fold, INNER_BLOCKS contiguous blocks of it (as `inner_folds` does)."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) > 1:
        return groups
    return make_folds("blocks", len(groups), max(2, min(INNER_BLOCKS, len(groups) // 2)))


def out_of_group_retrieval(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                           n_nearest: tuple[int, ...],
                           temperatures: tuple[float, ...]) -> list[np.ndarray]:
    """Each row's retrieval estimate from the other groups' rows, for every (k, temperature)
    pair (k outer): never from its own group's labels."""
    out = [np.zeros(y.shape, np.float32) for _ in range(len(n_nearest) * len(temperatures))]
    for g in np.unique(groups):
        rows = groups == g
        preds = nearest_predictions(x[~rows], y[~rows], x[rows], n_nearest, temperatures)
        for full, pred in zip(out, preds):
            full[rows] = pred
    return out


def retrieval_ridge_predictions(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                                x_query: np.ndarray, n_nearest: tuple[int, ...],
                                temperatures: tuple[float, ...], alphas: tuple[float, ...],
                                pca_dim: int | None = None,
                                target_dim: int | None = None) -> list[np.ndarray]:
    """Predictions for every (k, temperature, alpha), in that order (alpha inner): retrieval
    from the fit rows plus a ridge (alpha) fitted on the rows' out-of-group residuals."""
    base = nearest_predictions(x, y, x_query, n_nearest, temperatures)
    estimates = out_of_group_retrieval(x, y, residual_groups(groups), n_nearest, temperatures)
    paths = fit_ridge_paths(x, [y - e for e in estimates], pca_dim, target_dim)
    z = paths[0].project(x_query)
    return [pred + path.predict_projected(z, a) for pred, path in zip(base, paths)
            for a in alphas]


def cv_retrieval_ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, folds: np.ndarray,
                       n_nearest: tuple[int, ...], temperatures: tuple[float, ...],
                       alphas: tuple[float, ...], pca_dim: int | None = None,
                       splitter: str = "blocks",
                       target_dim: int | None = None) -> RecipeResult:
    """Nested CV of retrieval plus a residual ridge: each outer fold picks (k, temperature,
    alpha) on the other folds (`nested_choice_on_rows`), then predicts its own rows from the
    other folds (their residuals left-fold-out among themselves); the test set uses the triple
    with the best mean over the folds, fitted on every row with the folds as groups."""
    triples = [(k, t, a) for k in n_nearest for t in temperatures for a in alphas]

    def held_out_scores(fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
        preds = retrieval_ridge_predictions(x[fit], y[fit], folds[fit], x[rows], n_nearest,
                                            temperatures, alphas, pca_dim, target_dim)
        return np.array([score(y[rows], p)["score"] for p in preds])

    def predict(fit: np.ndarray, query: np.ndarray, triple: tuple) -> np.ndarray:
        k, t, a = triple
        return retrieval_ridge_predictions(x[fit], y[fit], folds[fit], query, (k,), (t,), (a,),
                                           pca_dim, target_dim)[0]

    choices, curve = nested_choice_on_rows(folds, held_out_scores, len(triples))
    oof = np.zeros(y.shape, np.float32)
    for held, choice in zip(np.unique(folds), choices):
        oof[folds == held] = predict(folds != held, x[folds == held], triples[choice])
    best = triples[int(np.argmax(curve))]
    test_pred = predict(np.ones(len(x), bool), x_test, best)
    cv = score_folds(y, oof, folds, splitter)
    rule = selection_rule(folds, len(triples), on_rows=True)
    for parts, choice in zip(cv["folds"], choices):
        k, t, a = triples[choice]
        parts.update(n_nearest=k, temperature=t, alpha=a, selection=rule)
    details = {"n_nearest": best[0], "temperature": best[1], "alpha": best[2],
               "curve": {f"{k}@{t:g}+{a:g}": float(v) for (k, t, a), v in zip(triples, curve)}}
    return RecipeResult(oof, test_pred, cv, details)


def frozen_features(cfg: TrainConfig, data: KitData,
                    folds: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
    """Train and test features of the frozen backbone, as `cfg.feature_spec` names them (cached;
    D4 TTA unless TTA is off or SMOKE), centred per slice with CENTRE_FEATURES; and whether TTA
    was used."""
    spec = cfg.feature_spec
    features = cached_features(data, spec, cfg.batch_size, compile=cfg.compile)
    return (centre_by_fold(features, folds) if cfg.centre_features else features), spec.tta


def centre_by_fold(features: dict[str, np.ndarray], folds: np.ndarray) -> dict[str, np.ndarray]:
    """Each slice's features minus that slice's mean: the train rows of every CV fold (a slice
    with CV="slices") by their fold's mean, the test rows (one unseen slice, as DACON's) by
    theirs. It reads images only, never targets, and treats a validation fold as the test set is
    treated, so CV stays honest; it removes what is constant within a slice (staining, scanner)."""
    train = np.asarray(features["train"], np.float32).copy()
    for k in np.unique(folds):
        train[folds == k] -= train[folds == k].mean(axis=0)
    test = np.asarray(features["test"], np.float32)
    return {"train": train, "test": test - test.mean(axis=0)}


def train_retrieval(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                    splitter: str) -> RecipeResult:
    """Retrieval on the same cached frozen features as ridge."""
    features, tta = frozen_features(cfg, data, folds)
    result = cv_retrieval(features["train"], data.y, features["test"], folds, cfg.n_nearest,
                          cfg.temperatures, splitter)
    result.details.update(n_features=features["train"].shape[1], tta=tta,
                          centre_features=cfg.centre_features)
    return result


def train_retrieval_ridge(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                          splitter: str) -> RecipeResult:
    """Retrieval corrected by a ridge on its out-of-slice residuals, on the cached features."""
    features, tta = frozen_features(cfg, data, folds)
    result = cv_retrieval_ridge(features["train"], data.y, features["test"], folds,
                                cfg.n_nearest, cfg.temperatures, cfg.alphas, cfg.pca_dim,
                                splitter, cfg.target_pca)
    result.details.update(n_features=features["train"].shape[1], tta=tta,
                          centre_features=cfg.centre_features)
    return result


def train_ridge(cfg: TrainConfig, data: KitData, folds: np.ndarray,
                splitter: str) -> RecipeResult:
    """Frozen-feature ridge: cached features, nested-CV alpha (one per target PC with
    ALPHA_PER_COMPONENT), refit on all rows for test."""
    features, tta = frozen_features(cfg, data, folds)
    if cfg.alpha_per_component:
        fit = cv_ridge_per_component(features["train"], data.y, features["test"], folds,
                                     cfg.alphas, cfg.pca_dim, splitter, cfg.target_pca)
    else:
        fit = cv_ridge(features["train"], data.y, features["test"], folds, cfg.alphas,
                       cfg.pca_dim, splitter, cfg.target_pca)
    curve = "component_alpha_curve" if cfg.alpha_per_component else "alpha_curve"
    details = {"n_features": features["train"].shape[1], "tta": tta,
               "centre_features": cfg.centre_features, "alpha": fit.alpha,
               "fold_alphas": fit.fold_alphas, curve: fit.alpha_curve}
    return RecipeResult(fit.oof, fit.test_pred, fit.cv, details)


# --- fine-tuning: the recipe ----------------------------------------------------------------

NOT_TRAINING = ("run_dir", "overwrite", "resume", "num_workers", "devices", "data_dir")
STOPPING_FRACTION = 0.15  # with PATIENCE: share of each training fold's rows (its last rows)
# held out of a unit's training, to stop it early and choose its OOF epoch on


def train_finetune(cfg: TrainConfig, data: KitData, folds: np.ndarray, splitter: str,
                   folder: Path | None = None) -> RecipeResult:
    """Fine-tuned backbone + gene-group heads per fold; resumable. Every unit is trained and its
    weights kept after every epoch; each fold's OOF predictions come from an epoch chosen without
    its labels: with PATIENCE, the best epoch on rows held out of the unit's own training rows
    (which also stop it early), else the last; the test predictions from the epoch best on all
    folds' curves (`choose_epochs`). `folder`: where the run is written (default RUN_DIR)."""
    images, test_images = load_images(data, "train"), load_images(data, "test")
    units = plan_units(folds, resolve_groups(cfg, data, folds), cfg.group_mode,
                       STOPPING_FRACTION if cfg.patience else 0.0)
    run = folder or resolve(cfg.run_dir)
    checkpoints = prepare_checkpoints(run, checkpoint_settings(cfg, data), cfg.resume)
    watch = Stopwatch(checkpoints / "elapsed.json")
    devices = device_count(cfg.devices)
    if devices > 1 and not all((checkpoints / u.name / "history.json").is_file() for u in units):
        batch_size = cfg.batch_size or devices * train_batch_size(process_device())
        launch_data_parallel(data_parallel_worker, (cfg, units, images, data.y, checkpoints),
                             devices, batch_size, checkpoints)
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
    GROUP_STRATEGY; the groups of GENE_GROUPS for a strategy that reads no targets (prefix, file);
    otherwise the strategy refitted on the fold's training rows with the settings 02 wrote
    beside GENE_GROUPS, so no fold is scored with groups made from its own targets."""
    ids = [int(k) for k in np.unique(folds)]
    if not cfg.group_strategy:
        return dict.fromkeys(ids, {"all": np.arange(len(data.genes))})
    saved = load_gene_groups(cfg.gene_groups, data.genes, cfg.group_strategy)  # checks the file
    if cfg.group_strategy in LABEL_FREE:
        return dict.fromkeys(ids, saved)
    settings = read_grouping_settings(cfg.gene_groups, cfg.group_strategy)
    return {k: groups_on_rows(settings, cfg.group_strategy, data.genes, data.y[folds != k])
            for k in ids}


def checkpoint_settings(cfg: TrainConfig, data: KitData) -> dict:
    """What a checkpoint folder must have been trained with to be resumed."""
    return {**{k: v for k, v in to_dict(cfg).items() if k not in NOT_TRAINING},
            "n_train": len(data.train), "n_genes": len(data.genes), "data": data.fingerprint}


def train_units(cfg: TrainConfig, units: list[Unit], images: np.ndarray, y: np.ndarray,
                checkpoints: Path, watch: Stopwatch | None = None) -> dict[str, list[dict]]:
    """Train every unit in turn, each on its own (up to EPOCHS; with PATIENCE it stops on its
    own stopping rows, `stop_epoch`): no unit's length depends on another's curve. Returns their
    epoch histories. A unit trained before is read back, not trained again."""
    return {unit.name: train_unit(unit, cfg, images, y, checkpoints / unit.name, cfg.epochs,
                                  watch) for unit in units}


def data_parallel_worker(cfg: TrainConfig, units: list[Unit], images: np.ndarray, y: np.ndarray,
                         checkpoints: Path) -> None:
    """One process of a data-parallel run: train every unit in step with the other processes."""
    with data_parallel_process() as main:
        watch = Stopwatch(checkpoints / "elapsed.json") if main else None
        train_units(cfg, units, images, y, checkpoints, watch)


# --- fine-tuning: one unit ------------------------------------------------------------------

def train_unit(unit: Unit, cfg: TrainConfig, images: np.ndarray, y: np.ndarray, folder: Path,
               last_epoch: int, watch: Stopwatch | None = None) -> list[dict]:
    """Train one unit up to `last_epoch` (resuming from `folder/last.pt` if present), scoring its
    validation rows after every epoch (epoch 0: the starting point) and keeping that epoch's
    weights; returns the epoch history. A trained unit leaves `folder/history.json` and is not
    trained again."""
    if (folder / "history.json").is_file():
        return read_json(folder / "history.json")
    checkpoint = folder / "last.pt"
    setup = setup_unit(unit, cfg, images, y, resume=checkpoint.is_file())
    step, batch_size = setup["step"], setup["batch_size"]

    def end_epoch(stats: dict) -> dict:
        return score_epoch(unit, step, images, y, stats, folder)

    try:
        if checkpoint.is_file():
            state = load_checkpoint(checkpoint, step)
        else:
            state = {"history": [], "epoch": 0}
            close_epoch(step, state, 0, lambda: end_epoch({"epoch": 0}), checkpoint)
        dataset = PatchDataset(images, setup["z"], unit.train_idx, setup["transform"])
        run_epochs(step, dataset, batch_size, range(state["epoch"] + 1, last_epoch + 1),
                   lambda epoch: epoch_seed(cfg.seed, unit.index, epoch), checkpoint, state,
                   end_epoch, loader_workers(cfg.num_workers, step.device), desc=unit.name,
                   on_saved=watch.tick if watch is not None else None,
                   last_epoch=lambda: stop_epoch(state["history"], last_epoch, cfg.patience))
    except RuntimeError as err:
        if is_oom(err):
            raise oom_error(err, batch_size, cfg.img_size, folder, cfg.resume) from err
        raise
    if world()[0] == 0:
        write_json(folder / "history.json", state["history"])
        remove_file(checkpoint)
    wait_for_others()
    return read_json(folder / "history.json")


def stop_epoch(history: list[dict], epochs: int, patience: int | None) -> int:
    """The last epoch to train a unit, given its epochs so far: EPOCHS, or, with PATIENCE,
    `patience` epochs past the best epoch of its own stopping rows (`stop_score`: rows of the
    other folds held out of its training), never another unit's curve nor its scored fold. In a
    data-parallel run process 0 (which scores) decides for every process."""
    last = epochs
    if patience and history and "stop_score" in history[-1]:
        last = min(epochs, int(np.argmax([row["stop_score"] for row in history])) + patience)
    if world()[1] > 1:
        shared = [last]
        torch.distributed.broadcast_object_list(shared, src=0)
        last = shared[0]
    return last


def choose_epochs(units: list[Unit], histories: dict[str, list[dict]]) -> dict[str, dict]:
    """Per unit: the epoch of its OOF predictions, chosen without its fold's labels (the best
    epoch of its own stopping rows with PATIENCE, else its last epoch), and the epoch of its test
    predictions, chosen on the mean validation curve of all folds' units of its group (over the
    epochs all of them trained); plus its own best epoch (optimistic)."""
    choice, folds = {}, {u.fold for u in units}
    for unit in units:
        peers = [u for u in units if u.group == unit.group]
        if {u.fold for u in peers} != folds:  # fold-aware groups differ by fold: pool each fold
            peers = units
        common = min(len(histories[u.name]) for u in peers)
        test_curve = np.mean([[row["val_score"] for row in histories[u.name][:common]]
                              for u in peers], axis=0)
        history = histories[unit.name]
        own = np.array([row["val_score"] for row in history])
        stopping = [row["stop_score"] for row in history if "stop_score" in row]
        chosen = (int(np.argmax(stopping)), "stopping rows (nested)") \
            if len(stopping) == len(history) else (history[-1]["epoch"], "last epoch")
        choice[unit.name] = {
            "oof_epoch": chosen[0], "test_epoch": int(np.argmax(test_curve)),
            "best_epoch_on_fold": int(np.argmax(own)), "best_score_on_fold": float(own.max()),
            "selection": chosen[1]}
    return choice


def setup_unit(unit: Unit, cfg, images: np.ndarray, y: np.ndarray, resume: bool) -> dict:
    """Model (targets fitted on the unit's training rows, blocks frozen, heads initialised by
    ridge unless resuming), optimizer, schedule, scaler, EMA, loss and augmentation."""
    device = process_device()
    batch_size = cfg.batch_size or world()[1] * train_batch_size(device)  # the global batch
    model = build_model(unit_spec(unit, cfg), cfg.pretrained, cfg.seed)
    set_targets(model, y[unit.train_idx][:, unit.genes])
    z = ((y[:, unit.genes] - model.y_mean.numpy()) / model.y_std.numpy()).astype(np.float32)
    freeze_blocks(model, cfg.freeze)
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
    step = Stepper(model, create_loss(cfg.loss, groups), optimizer, scheduler,
                   grad_scaler(device), ema, device, cfg.grad_clip, cfg.accumulate,
                   wrap_data_parallel(model, device, cfg.freeze_bn), cfg.mixup)
    return {"step": step, "device": device, "batch_size": batch_size, "z": z,
            "transform": build_augment(cfg.augment)}


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
    """Linear probe: ridge from the model's frozen features (its FEATURE_STAGES and
    FEATURE_CROPS, averaged over the D4 views with TTA, as the ridge recipe reads them) to every
    head's targets, alpha by inner block CV on the metric over the training rows (on TARGET_PCA
    components, as the ridge recipe); fine-tuning starts from it. Returns alpha."""
    rows = unit.train_idx
    features = predict(model, images, rows, tta=cfg.applied_tta, features=True)
    inner = make_folds("blocks", len(rows), min(3, len(rows)))
    alpha = cv_ridge(features, y[rows][:, unit.genes], features[:1], inner, cfg.alphas,
                     cfg.pca_dim, target_dim=cfg.target_pca).alpha
    init_heads_ridge(model, features, z[rows], alpha, cfg.pca_dim)
    return alpha


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


def details_tables(details: dict) -> list:
    """config.json's recipe details as tables: the scalars (alpha, k, TTA, speed, …) and, for
    fine-tuning, the chosen and best epoch of every unit."""
    import pandas as pd

    curves = ("alpha_curve", "component_alpha_curve", "units", "curve")
    scalars = {k: v for k, v in details.items() if k not in curves}
    tables = [pd.Series(scalars, name="value", dtype=object).to_frame()]
    if "units" in details:
        tables.append(pd.DataFrame(details["units"]).T)
    return tables


def plot_alpha_curve(curve: dict | None):
    """Mean per-fold score against the ridge strength alpha (None: not a ridge run)."""
    if curve is None:
        return None
    fig, ax = figure(width=5)
    ax.semilogx(curve["alpha"], curve["score"], "o-")
    best = int(np.argmax(curve["score"]))
    ax.axvline(curve["alpha"][best], color="k", ls=":", label=f"best {curve['alpha'][best]:g}")
    ax.set(xlabel="alpha", ylabel="score (mean over folds)", title="ridge strength")
    ax.legend()
    return fig


RECIPES: dict[str, Callable[[TrainConfig, KitData, np.ndarray, str], RecipeResult]] = {
    "ridge": train_ridge,
    "finetune": train_finetune,
    "retrieval": train_retrieval,
    "retrieval_ridge": train_retrieval_ridge,
}
