"""Grad-CAM of a fine-tuned run: targets by name, the run's models, and CAM similarity by group.

What `notebooks/05_gradcam.ipynb` explains is a target: a weighted sum of a model's outputs.
- one gene (`"ACTB"` or `"gene:ACTB"`): its output;
- a gene group (`"group:MT"`; `"groups"`: every group of a strategy of `gene_groups.csv`): the
  mean of its genes' outputs;
- `"heg50"` / `"hvg50"`: the mean over the metric's 50 most expressed / most variable genes.
CAM methods are pytorch-grad-cam classes chosen by name (`list_methods`); the torch side lives in
`utils.cam_model`, the figures in `utils.cam_plots`. This module needs only numpy and pandas.

The prefix observation as a number: per gene, a CAM over the same patches; the similarity of two
genes is the Pearson r of their maps on a patch, averaged over patches; `within` is the mean over
pairs of genes in the same group, `between` over pairs in different groups (`other` left out).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.genes import OTHER

# name → pytorch_grad_cam class. Every one is computed from the target layer's activations and
# gradients, so one forward pass per batch serves every target (see utils.cam_model).
METHODS = {"GradCAM": "GradCAM", "GradCAM++": "GradCAMPlusPlus", "XGradCAM": "XGradCAM",
           "LayerCAM": "LayerCAM", "HiResCAM": "HiResCAM", "EigenCAM": "EigenCAM",
           "EigenGradCAM": "EigenGradCAM", "GradCAMElementWise": "GradCAMElementWise"}
TOP_TARGETS = ("heg50", "hvg50")  # utils.metric.top_genes
SCALES = ("standardised", "original")


def list_methods() -> list[str]:
    """CAM method names accepted by `utils.cam_model.make_method`."""
    return list(METHODS)


def check_method(name: str) -> str:
    """A method's registry name (case-insensitive; pytorch-grad-cam class names work too)."""
    lookup = {k.lower(): k for k in METHODS} | {v.lower(): k for k, v in METHODS.items()}
    if str(name).lower() not in lookup:
        raise ValueError(f"unknown CAM method {name!r}; choose from {list_methods()}")
    return lookup[str(name).lower()]


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
            from utils.metric import top_genes

            targets.append(Target(spec, "top", np.sort(top_genes(y)[spec])))
        elif spec == "groups":
            if not groups:
                raise ValueError("target 'groups' needs gene groups (GENE_GROUPS and GROUPS)")
            targets += [Target(g, "group", np.asarray(c)) for g, c in groups.items()
                        if g != OTHER]
        elif kind != "group" and name in index:
            targets.append(Target(name, "gene", np.array([index[name]])))
        elif kind != "gene" and name in groups:
            targets.append(Target(name, "group", np.asarray(groups[name])))
        else:
            close = difflib.get_close_matches(name, [*genes, *groups], n=5, cutoff=0.5)
            raise ValueError(f"target {spec!r} is neither a gene nor a group of GROUPS, nor one "
                             f"of {[*TOP_TARGETS, 'groups']}; closest names: {close}")
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
    from utils.genes import load_gene_groups
    from utils.paths import resolve

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

def read_model_info(run_dir: str | os.PathLike) -> dict:
    """`model.json` of a fine-tuning run; any other folder is an error that says why."""
    from utils.io import read_json
    from utils.paths import resolve

    folder = resolve(run_dir)
    if (folder / "model.json").is_file():
        return read_json(folder / "model.json")
    if (folder / "config.json").is_file():
        recipe = read_json(folder / "config.json").get("recipe")
        raise ValueError(f"{folder} is a RECIPE={recipe!r} run: it has no fine-tuned network to "
                         "explain (a frozen backbone + ridge has no model.json or weights/). Set "
                         "RUN_DIR to a run of 04_train with RECIPE='finetune'")
    raise FileNotFoundError(f"{folder} is not a run folder (no model.json, no config.json); set "
                            "RUN_DIR to a run of 04_train with RECIPE='finetune'")


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


def _pair_means(sim: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """Mean similarity over pairs (i ≠ j) with the same label and with different labels."""
    known = np.isfinite(sim) & ~np.eye(len(sim), dtype=bool)
    same = labels[:, None] == labels[None, :]
    values = np.where(known, sim, 0.0)
    n_within, n_between = (known & same).sum(), (known & ~same).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((values * same).sum() / n_within, (values * ~same).sum() / n_between,
                int(n_within) // 2, int(n_between) // 2)


def within_between(sim: np.ndarray, labels: np.ndarray, n_permutations: int = 0,
                   seed: int = 0, leave_out: Sequence[str] = (OTHER,)) -> dict:
    """Mean CAM similarity within and between groups (genes in `leave_out` dropped), their
    difference, and the permutation p-value of the difference (labels shuffled among genes)."""
    keep = ~np.isin(labels, list(leave_out))
    sim, labels = sim[np.ix_(keep, keep)], np.asarray(labels)[keep]
    within, between, n_w, n_b = _pair_means(sim, labels)
    result = {"genes": int(keep.sum()), "groups": len(np.unique(labels)), "within": within,
              "between": between, "contrast": within - between, "within_pairs": n_w,
              "between_pairs": n_b, "p_value": np.nan}
    if n_permutations and n_w and n_b:
        rng = np.random.default_rng(seed)
        null = np.array([np.subtract(*_pair_means(sim, rng.permutation(labels))[:2])
                         for _ in range(n_permutations)])
        result["p_value"] = (1 + (null >= result["contrast"] - 1e-12).sum()) / (1 + len(null))
    return result


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
    sim, labels = sim[np.ix_(keep, keep)], np.asarray(labels)[keep]
    off = np.where(np.eye(len(sim), dtype=bool), np.nan, sim)
    rows = []
    for name in np.unique(labels):
        member = labels == name
        rows.append({"group": name, "genes": int(member.sum()),
                     "within": _nanmean(off[np.ix_(member, member)]),
                     "between": _nanmean(off[np.ix_(member, ~member)])})
    return pd.DataFrame(rows, columns=["group", "genes", "within", "between"])


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN if there is none."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def write_cams(path: str | os.PathLike, maps: np.ndarray, scores: np.ndarray,
               targets: Sequence[Target], patch_ids: Sequence[str]) -> Path:
    """CAMs (targets, patches, h, w), target values and names into one .npz, atomically."""
    from utils.io import write_with

    arrays = {"maps": maps.astype(np.float32), "scores": scores.astype(np.float32),
              "targets": np.array([t.name for t in targets]),
              "kinds": np.array([t.kind for t in targets]), "patch_ids": np.array(patch_ids)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
            np.savez_compressed(f, **arrays)

    return write_with(path, write)
