"""06_gradcam: Grad-CAM of a fine-tuned run, per gene, gene group or the metric's top genes.

What the notebook explains is a target: a weighted sum of a model's outputs.
- one gene (`"ACTB"` or `"gene:ACTB"`): its output;
- a gene group (`"group:MT"`; `"groups"`: every group of a strategy of `gene_groups.csv`): the
  mean of its genes' outputs;
- `"heg50"` / `"hvg50"`: the mean over the metric's 50 most expressed / most variable genes.
CAM methods are pytorch-grad-cam classes chosen by name (`utils.choices.CAM_METHODS`).

Per batch: one forward pass of the model (with the preprocessing it was trained with) records
the target layer's output; then one backward pass per target, from the target to that layer
only; the pytorch-grad-cam method turns activations and gradients into maps. A target's CAM is
therefore exactly what the library computes for it alone, at a fraction of the cost.

Where a CAM is computed (`utils.cam_layers.choose_layer`; `LAYER`, `RESHAPE` override it):
- token models (ViT, DeiT, EVA, XCiT, … : `patch_embed` + `blocks`): the last block's input
  norm (`blocks.<last>.norm1`: the patch tokens that the class token attends to in the last
  block; their outputs after it never reach a class-token head). XCiT: the last XCA block, whose
  patch tokens feed its class-attention blocks. Tokens are laid out on the model's own patch
  grid (input size // patch size) after dropping class and register tokens.
- every other model (CNNs, CoAtNet, MaxViT, MambaOut): the last top-level module with a spatial
  output before pooling (`stages.3`, `layer4`, `bn2`, …), found by one probe forward;
  channels-last outputs are permuted.

The prefix observation as a number: per gene, a CAM over the same patches; the similarity of two
genes is the Pearson r of their maps on a patch, averaged over patches; `within` and `between`
are `utils.genes.within_between` of that similarity (`other` left out).

This module imports torch (and pytorch-grad-cam on use); `import utils` does not import it.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.cam_layers import LayerChoice, choose_layer
from utils.choices import CAM_METHODS, CAM_SCALES, OTHER, check_method
from utils.config import to_dict
from utils.data import load_images
from utils.files import write_csv, write_json, write_with
from utils.genes import by_group, load_gene_groups, within_between
from utils.loop import default_device, inference_batch_size
from utils.metric import top_genes
from utils.models import load_unit_model
from utils.places import resolve
from utils.runs import check_trained_on, load_run, read_model_info

TOP_TARGETS = ("heg50", "hvg50")  # utils.metric.top_genes




# --- targets ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What a CAM explains: the mean of some genes' outputs (column indices into the genes)."""

    name: str
    kind: str  # "gene", "group" or "top"
    genes: np.ndarray


def make_targets(specs: Sequence[str], genes: Sequence[str],
                 groups: dict[str, np.ndarray] | None = None,
                 y: np.ndarray | None = None) -> list[Target]:
    """Targets from names: a gene, `gene:<name>`, `group:<name>`, `groups` (every group but
    `other`), or `heg50` / `hvg50` (needs the train targets `y`)."""
    index = {g: i for i, g in enumerate(genes)}
    groups = groups or {}
    targets: list[Target] = []
    for spec in specs:
        kind, _, name = str(spec).rpartition(":")
        if spec in TOP_TARGETS:
            if y is None:
                raise ValueError(f"target {spec!r} needs the train targets y")

            targets.append(Target(spec, "top", np.sort(top_genes(y)[spec])))
        elif spec == "groups":
            if not groups:
                raise ValueError("target 'groups' needs gene groups (GENE_GROUPS and "
                                 "GROUP_STRATEGY)")
            targets += [Target(g, "group", np.asarray(c)) for g, c in groups.items()
                        if g != OTHER]
        elif kind != "group" and name in index:
            targets.append(Target(name, "gene", np.array([index[name]])))
        elif kind != "gene" and name in groups:
            targets.append(Target(name, "group", np.asarray(groups[name])))
        else:
            close = difflib.get_close_matches(name, [*genes, *groups], n=5, cutoff=0.5)
            raise ValueError(f"target {spec!r} is neither a gene nor a group of GROUP_STRATEGY, "
                             f"nor one of {[*TOP_TARGETS, 'groups']}; closest names: {close}")
    return targets


def target_weights(targets: Sequence[Target], n_genes: int) -> np.ndarray:
    """(targets, genes) float32: each row averages its target's genes."""
    weights = np.zeros((len(targets), n_genes), np.float32)
    for row, target in zip(weights, targets):
        row[target.genes] = 1.0 / len(target.genes)
    return weights


def gene_targets(genes: Sequence[str], columns: np.ndarray) -> list[Target]:
    """One target per gene column."""
    return [Target(genes[c], "gene", np.array([c])) for c in columns]


def top_variable_per_group(groups: dict[str, np.ndarray], y: np.ndarray, per_group: int,
                           leave_out: Sequence[str] = (OTHER,)) -> np.ndarray:
    """Sorted columns of the `per_group` most variable genes of every group (not `other`)."""
    var = np.asarray(y, dtype=np.float64).var(axis=0)
    picked = [cols[np.argsort(-var[cols], kind="stable")[:per_group]]
              for name, cols in groups.items() if name not in leave_out]
    return np.unique(np.concatenate(picked)) if picked else np.zeros(0, int)


def load_groupings(path: str | os.PathLike | None, genes: Sequence[str],
                   strategies: Sequence[str] = (), also: str | None = None,
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Strategy → {group: gene columns} from a gene_groups.csv (None: no groups): the given
    strategies (none: every one in the file) plus `also`."""
    if path is None:
        return {}
    if not strategies and resolve(path).is_file():
        strategies = pd.read_csv(resolve(path), usecols=["strategy"])["strategy"].unique()
    names = dict.fromkeys([*strategies, *([also] if also else [])])
    return {s: load_gene_groups(path, list(genes), s) for s in names}


def similarity_genes(groupings: dict[str, dict[str, np.ndarray]], y: np.ndarray,
                     per_group: int) -> np.ndarray:
    """Gene columns whose CAMs are compared: the most variable genes of every named group of
    every strategy (one set, so all strategies are judged on the same maps)."""
    picked = [top_variable_per_group(groups, y, per_group) for groups in groupings.values()]
    return np.unique(np.concatenate(picked)) if picked else np.zeros(0, int)


def gene_labels(groups: dict[str, np.ndarray], n_genes: int) -> np.ndarray:
    """Group name of every gene column."""
    labels = np.full(n_genes, OTHER, dtype=object)
    for name, cols in groups.items():
        labels[cols] = name
    return labels.astype(str)


# --- the run's models -------------------------------------------------------------------------



def check_run_genes(info: dict, genes: Sequence[str]) -> None:
    """The run was trained on these genes (same names, same order), or an error."""
    if list(info["genes"]) != list(genes):
        raise ValueError(f"the run's model.json lists {len(info['genes'])} genes, the data "
                         f"{len(genes)} (or another order): was it trained on other data?")


def fold_units(info: dict, fold: int) -> dict[str, np.ndarray]:
    """Units of one fold → the gene columns each predicts, in its output order."""
    units = {name: np.asarray(u["spec"]["genes"]) for name, u in info["units"].items()
             if u["fold"] == fold}
    if not units:
        folds = sorted({u["fold"] for u in info["units"].values()})
        raise ValueError(f"FOLD={fold}: the run has no unit of that fold; folds: {folds}")
    return units


def split_targets(weights: np.ndarray, unit_genes: dict[str, np.ndarray],
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each unit's part of every target: (weights over its outputs, share of the target).

    With one model for all genes the share is 1. With one model per gene group, a target that
    spans groups is the share-weighted mean of its parts (its CAM too: an average of maps).
    """
    parts = {}
    for unit, cols in unit_genes.items():
        w = weights[:, cols]
        share = w.sum(axis=1)
        parts[unit] = (w / np.where(share > 0, share, 1.0)[:, None], share)
    total = sum(share for _, share in parts.values())
    missing = np.flatnonzero(~np.isclose(total, weights.sum(axis=1)))
    if len(missing):
        raise ValueError(f"targets {missing.tolist()} use genes no model of this fold predicts")
    return parts


def choose_patches(split: str, folds: np.ndarray, fold: int, n_test: int, n: int,
                   seed: int = 0) -> np.ndarray:
    """Sorted rows to explain: `n` at random from the fold's held-out train rows ("val") or from
    the test patches ("test"), none of which the fold's model was trained on."""
    if split == "val":
        pool = np.flatnonzero(folds == fold)
    elif split == "test":
        pool = np.arange(n_test)
    else:
        raise ValueError(f"PATCHES={split!r}: use 'val' (held-out rows of FOLD) or 'test'")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


# --- similarity of CAMs -----------------------------------------------------------------------

def map_similarity(maps: np.ndarray) -> np.ndarray:
    """(targets, targets): Pearson r between two targets' maps on the same patch, averaged
    over the patches where both maps vary (NaN if there is none). maps: (T, N, h, w)."""
    flat = np.asarray(maps, dtype=np.float64).reshape(*maps.shape[:2], -1)
    flat = flat - flat.mean(axis=2, keepdims=True)
    norm = np.sqrt((flat ** 2).sum(axis=2))
    valid = norm > 1e-12 * np.maximum(1.0, np.abs(flat).max(axis=2))
    unit = np.where(valid[..., None], flat / np.where(valid, norm, 1.0)[..., None], 0.0)
    r_sum = np.einsum("anp,bnp->ab", unit, unit)
    counts = valid.astype(np.float64) @ valid.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, r_sum / counts, np.nan)




def similarity_table(sim: np.ndarray, label_sets: dict[str, np.ndarray],
                     n_permutations: int = 0, seed: int = 0) -> pd.DataFrame:
    """`within_between` per strategy (rows), on the same CAMs."""
    rows = {name: within_between(sim, labels, n_permutations, seed)
            for name, labels in label_sets.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")


def similarity_by_group(sim: np.ndarray, labels: np.ndarray,
                        leave_out: Sequence[str] = (OTHER,)) -> pd.DataFrame:
    """Per group: genes, mean similarity among its genes and to genes of other groups."""
    keep = ~np.isin(labels, list(leave_out))
    return by_group(sim[np.ix_(keep, keep)], np.asarray(labels)[keep])


def write_cams(path: str | os.PathLike, maps: np.ndarray, scores: np.ndarray,
               targets: Sequence[Target], patch_ids: Sequence[str]) -> Path:
    """CAMs (targets, patches, h, w), target values and names into one .npz, atomically."""
    arrays = {"maps": maps.astype(np.float32), "scores": scores.astype(np.float32),
              "targets": np.array([t.name for t in targets]),
              "kinds": np.array([t.kind for t in targets]), "patch_ids": np.array(patch_ids)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
            np.savez_compressed(f, **arrays)

    return write_with(path, write)


# --- computing CAMs -------------------------------------------------------------------------

def make_method(name: str, model: nn.Module, layer: nn.Module):
    """A pytorch-grad-cam method object by name (see `utils.cam.list_methods`); its own hooks
    are removed, since `compute_cams` runs the passes for every target at once."""
    import pytorch_grad_cam

    cam = getattr(pytorch_grad_cam, CAM_METHODS[check_method(name)])(model, [layer])
    cam.activations_and_grads.release()
    return cam


class LayerTap:
    """Forward hook that makes a layer's output the start of the autograd graph (nothing before
    it is recorded) and keeps it, so gradients of any target can be taken with respect to it."""

    def __init__(self, module: nn.Module):
        self.module, self.output, self.handle = module, None, None

    def _hook(self, module, inputs, output):
        self.output = output.detach().requires_grad_(True)
        return self.output.clone()  # later in-place ops act on a copy, never on the leaf

    def __enter__(self) -> LayerTap:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@contextmanager
def no_parameter_grads(model: nn.Module):
    """Parameters need no gradients for a CAM: switch them off, then restore the flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def output_weights(model: nn.Module, weights: np.ndarray,
                   scale: str = "standardised") -> tuple[torch.Tensor, torch.Tensor]:
    """Targets as (weights over the model's outputs, offset): on the standardised scale the
    model predicts, or on the original expression scale (genes weighted by their std)."""
    if scale not in CAM_SCALES:
        raise ValueError(f"SCALE={scale!r}: choose from {CAM_SCALES}")
    w = torch.as_tensor(weights, dtype=torch.float32, device=model.y_std.device)
    if scale == "standardised":
        return w, torch.zeros(len(w), device=w.device)
    return w * model.y_std, w @ model.y_mean


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """ReLU, then each map scaled to [0, 1] (pytorch-grad-cam's convention); all-zero stays 0."""
    maps = np.maximum(maps, 0).astype(np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / (1e-7 + maps.max(axis=(-2, -1), keepdims=True) - low)


def cam_batch(cam, x: torch.Tensor, tap: LayerTap, choice: LayerChoice,
              scores: torch.Tensor) -> np.ndarray:
    """(targets, B, h, w) maps of one batch: one backward pass per target to the layer only."""
    acts = choice.reshape(tap.output).detach().cpu().numpy()
    if not cam.uses_gradients:  # EigenCAM: the same map for every target
        one = cam.get_cam_image(x, choice.module, None, acts, None, False)
        return np.broadcast_to(normalise_maps(one), (scores.shape[1], *one.shape)).copy()
    maps = []
    for t in range(scores.shape[1]):
        grad, = torch.autograd.grad(scores[:, t].sum(), tap.output,
                                    retain_graph=t < scores.shape[1] - 1)
        grads = choice.reshape(grad).cpu().numpy()
        maps.append(cam.get_cam_image(x, choice.module, None, acts, grads, False))
    return normalise_maps(np.stack(maps))


def compute_cams(model: nn.Module, images: np.ndarray, weights: np.ndarray, choice: LayerChoice,
                 method: str = "GradCAM", scale: str = "standardised",
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CAMs (targets, N, h, w) in [0, 1] and target values (targets, N) of uint8 (N, H, W, 3)
    patches; `weights` (targets, outputs) defines each target as a weighted sum of outputs."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    cam = make_method(method, model, choice.module)
    w, offset = output_weights(model, weights, scale)
    maps, values = [], []
    with LayerTap(choice.module) as tap, no_parameter_grads(model), torch.enable_grad():
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size])  # copy off the memmap
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
            scores = model.eval()(x).float() @ w.T  # model applies its own preprocessing
            maps.append(cam_batch(cam, x, tap, choice, scores))
            values.append((scores + offset).detach().cpu().numpy().T)
    return np.concatenate(maps, axis=1), np.concatenate(values, axis=1)




def explain_run(run_dir: str | os.PathLike, fold: int, images: np.ndarray, weights: np.ndarray,
                method: str = "GradCAM", layer: str | None = None, reshape: str | None = None,
                scale: str = "standardised", batch_size: int | None = None,
                device: torch.device | str | None = None) -> dict:
    """CAMs of targets (`weights`: targets × the data's genes) with the fold's model(s) of a
    fine-tuning run: {"maps": (T, N, h, w), "scores": (T, N), "layers": {unit: layer}}."""
    if not len(weights):
        raise ValueError("no targets to explain: list genes, groups or heg50/hvg50 in TARGETS")
    device = device or default_device()
    parts = split_targets(weights, fold_units(read_model_info(run_dir), fold))
    maps, scores, layers = 0.0, 0.0, {}
    for unit, (w, share) in parts.items():
        used = share > 0
        if not used.any():
            continue
        model = load_unit_model(run_dir, unit, device)
        if list(model.spec.crops) != [1.0]:  # one forward pass per crop: the tap sees the last
            raise ValueError(f"{run_dir}: its models read FEATURE_CROPS={model.spec.crops} (one "
                             "forward pass per crop); Grad-CAM maps one pass per patch. Explain "
                             "a run trained with FEATURE_CROPS=[1.0]")
        choice = choose_layer(model.backbone, model.preprocess.size, layer, reshape)
        m, s = compute_cams(model, images, w[used], choice, method, scale, batch_size)
        part_maps = np.zeros((len(w), *m.shape[1:]), np.float32)
        part_scores = np.zeros((len(w), m.shape[1]), np.float32)
        part_maps[used], part_scores[used] = m, s
        maps = maps + share[:, None, None, None] * part_maps
        scores = scores + share[:, None] * part_scores
        layers[unit] = choice.describe()
    return {"maps": np.asarray(maps, np.float32), "scores": np.asarray(scores, np.float32),
            "layers": layers}


# --- the notebook's steps ---------------------------------------------------------------------

@dataclass
class CamJob:
    """What 06 explains: the run's model info, the patches and the targets."""

    info: dict  # the run's model.json
    units: dict[str, np.ndarray]  # the fold's units → gene columns they predict
    out: Path  # RUN_DIR/gradcam
    genes: list[str]
    images: np.ndarray  # uint8 (N, H, W, 3)
    patch_ids: list[str]
    groupings: dict[str, dict[str, np.ndarray]]  # strategy → group → gene columns
    targets: list[Target]  # the grid targets (TARGETS)
    compared: np.ndarray  # gene columns whose CAMs are compared by similarity

    @property
    def everything(self) -> list[Target]:
        """Grid targets, then one target per compared gene."""
        return self.targets + gene_targets(self.genes, self.compared)

    def units_table(self) -> pd.DataFrame:
        """The fold's models: group, the epoch of the explained weights (chosen on all folds),
        the epoch of its OOF predictions (chosen without its fold), genes predicted."""
        rows = {name: {"group": self.info["units"][name]["group"],
                       "epoch": self.info["units"][name]["epoch"],
                       "oof_epoch": self.info["units"][name]["oof_epoch"], "genes": len(cols)}
                for name, cols in self.units.items()}
        return pd.DataFrame.from_dict(rows, orient="index")

    def describe(self) -> str:
        """A few lines on the run, the patches and the targets."""
        info = self.info
        return (f"{info['backbone']} at {info['img_size'] or 'its default size'} px, "
                f"GROUP_MODE={info['group_mode']!r}: {len(self.units)} model(s) {list(self.units)}"
                f"\n{len(self.images)} patches of {self.images.shape[1]}x{self.images.shape[2]} px;"
                f" {len(self.targets)} grid targets, {len(self.compared)} genes compared over "
                f"{list(self.groupings)}")


def prepare(cfg, data) -> CamJob:
    """Check the run (a ridge run, or one trained on other data, stops here, saying so), write
    the config, pick the patches of FOLD that its model never trained on, and build the
    targets."""
    info = read_model_info(cfg.run_dir)
    units = fold_units(info, cfg.fold)
    check_run_genes(info, data.genes)
    run = load_run(cfg.run_dir)
    check_trained_on(run, data, "explain")  # same rows, genes, targets and images
    out = resolve(cfg.run_dir) / "gradcam"
    write_json(out / "config.json", to_dict(cfg))
    folds = run.folds
    rows = choose_patches(cfg.patches, folds, cfg.fold, len(data.test), cfg.n_patches, cfg.seed)
    split = "train" if cfg.patches == "val" else "test"
    frame = data.train if split == "train" else data.test
    groupings = load_groupings(cfg.gene_groups, data.genes, cfg.strategies,
                               also=cfg.group_strategy)
    return CamJob(info, units, out, list(data.genes), np.asarray(load_images(data, split)[rows]),
                  frame["ID"].iloc[rows].tolist(), groupings,
                  make_targets(cfg.targets, data.genes, groupings.get(cfg.group_strategy), data.y),
                  similarity_genes(groupings, data.y, cfg.genes_per_group))


def make_cams(cfg, job: CamJob) -> dict:
    """Every CAM of the job (grid targets and compared genes), written to `cams.npz` and
    `targets.csv`: {"maps", "scores", "layers", "seconds", "table"}."""
    start = time.perf_counter()
    everything = job.everything
    weights = target_weights(everything, len(job.genes))
    result = explain_run(cfg.run_dir, cfg.fold, job.images, weights, cfg.method, cfg.layer,
                         cfg.reshape, cfg.scale, cfg.batch_size)
    result["seconds"] = time.perf_counter() - start
    maps, scores = result["maps"], result["scores"]
    write_cams(job.out / "cams.npz", maps, scores, everything, job.patch_ids)
    result["table"] = pd.DataFrame({
        "target": [t.name for t in everything], "kind": [t.kind for t in everything],
        "genes": [len(t.genes) for t in everything], "mean_value": scores.mean(axis=1),
        "mean_cam": maps.mean(axis=(1, 2, 3))})
    write_csv(job.out / "targets.csv", result["table"])
    return result


def plot_job_grid(job: CamJob, result: dict, n_show: int):
    """The first `n_show` patches × the grid targets."""
    n_grid, n_show = len(job.targets), min(n_show, len(job.images))
    return plot_cam_grid(job.images[:n_show], result["maps"][:n_grid, :n_show],
                         [t.name for t in job.targets], result["scores"][:n_grid, :n_show],
                         job.patch_ids[:n_show])


def plot_job_groups(job: CamJob, result: dict):
    """The mean CAM of every group target (None if TARGETS has no group)."""
    rows = [i for i, t in enumerate(job.targets) if t.kind == "group"]
    if not rows:
        return None
    return plot_group_average(result["maps"][rows], [job.targets[i].name for i in rows],
                              [len(job.targets[i].genes) for i in rows])


def gene_similarity(cfg, job: CamJob, result: dict) -> dict:
    """CAM similarity of the compared genes, within vs between groups per strategy
    (`similarity.csv`) and per group of GROUP_STRATEGY (`similarity_by_group.csv`)."""
    sim = map_similarity(result["maps"][len(job.targets):])
    labels = {s: gene_labels(g, len(job.genes))[job.compared] for s, g in job.groupings.items()}
    table = similarity_table(sim, labels, cfg.n_permutations, cfg.seed)
    write_csv(job.out / "similarity.csv", table, index=True)
    groups = None
    if cfg.group_strategy in labels:
        groups = similarity_by_group(sim, labels[cfg.group_strategy])
        write_csv(job.out / "similarity_by_group.csv", groups)
    return {"sim": sim, "labels": labels, "table": table, "by_group": groups}


def describe_similarity(table: pd.DataFrame) -> str:
    """One line per strategy: CAM similarity within vs between its groups, and the p-value."""
    return "\n".join(f"{strategy}: CAM similarity within groups {row['within']:.3f} vs between "
                     f"{row['between']:.3f} (p = {row['p_value']:.3g}, {int(row['genes'])} genes, "
                     f"{int(row['groups'])} groups)" for strategy, row in table.iterrows())


# --- figures --------------------------------------------------------------------------------

CMAP = "jet"  # pytorch-grad-cam's overlay colours: red = where the target's gradient points


def _subplots(nrows: int, ncols: int, cell: float = 1.6, **kwargs):
    """A grid of square cells without ticks."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.4),
                             squeeze=False, layout="constrained", **kwargs)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def overlay(ax, patch: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> None:
    """A patch with its CAM (any resolution, stretched over the patch) on top."""
    height, width = patch.shape[:2]
    ax.imshow(patch)
    ax.imshow(cam, cmap=CMAP, alpha=alpha, vmin=0, vmax=1, interpolation="bilinear",
              extent=(0, width, height, 0))


def plot_cam_grid(patches: np.ndarray, maps: np.ndarray, names: Sequence[str],
                  scores: np.ndarray, patch_ids: Sequence[str]):
    """Patches (rows) × targets (columns): each CAM over its patch, the predicted target value
    (standardised unless SCALE='original') in the corner."""
    n_targets, n_patches = maps.shape[:2]
    fig, axes = _subplots(n_patches, n_targets + 1)
    for i in range(n_patches):
        axes[i, 0].imshow(patches[i])
        axes[i, 0].set_ylabel(str(patch_ids[i]), fontsize=7)
        for t in range(n_targets):
            ax = axes[i, t + 1]
            overlay(ax, patches[i], maps[t, i])
            ax.text(0.03, 0.04, f"{scores[t, i]:+.2f}", transform=ax.transAxes, fontsize=7,
                    color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
    axes[0, 0].set_title("patch", fontsize=8)
    for t, name in enumerate(names):
        axes[0, t + 1].set_title(str(name), fontsize=8)
    return fig


def plot_group_average(maps: np.ndarray, names: Sequence[str], sizes: Sequence[int],
                       ncols: int = 8):
    """Per gene group, its CAM averaged over the patches (where in a patch the group looks)."""
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = _subplots(nrows, ncols)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    mean = maps.mean(axis=1)
    for ax, name, size, image in zip(axes.flat, names, sizes, mean):
        ax.imshow(image, cmap=CMAP, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(f"{name} ({size})", fontsize=8)
    fig.suptitle("mean CAM over patches per gene group (genes)", fontsize=9)
    return fig


def plot_similarity(sim: np.ndarray, labels: np.ndarray, table: pd.DataFrame, strategy: str):
    """Left: gene × gene CAM similarity, genes sorted by `strategy`'s groups (`other` left out);
    right: mean similarity within vs between groups per strategy, with permutation p-values."""
    import matplotlib.pyplot as plt

    keep = np.flatnonzero(labels != OTHER)
    order = keep[np.argsort(labels[keep], kind="stable")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    image = left.imshow(sim[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1,
                        interpolation="nearest")
    names, starts = np.unique(labels[order], return_index=True)
    for start in starts[1:]:
        left.axhline(start - 0.5, color="black", lw=0.6)
        left.axvline(start - 0.5, color="black", lw=0.6)
    ends = np.append(starts[1:], len(order))
    left.set_yticks((starts + ends - 1) / 2, names, fontsize=7)
    left.set_xticks([])
    left.set_title(f"CAM similarity of genes, by {strategy} group", fontsize=9)
    fig.colorbar(image, ax=left, shrink=0.8, label="mean Pearson r over patches")
    x = np.arange(len(table))
    right.bar(x - 0.2, table["within"], 0.4, label="within groups")
    right.bar(x + 0.2, table["between"], 0.4, label="between groups")
    right.set_xticks(x, [f"{s}\np={p:.3g}" for s, p in zip(table.index, table["p_value"])],
                     fontsize=8)
    right.axhline(0, color="grey", lw=0.6)
    right.set_ylabel("mean CAM similarity (r)")
    right.legend(fontsize=8)
    return fig
