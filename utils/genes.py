"""Gene groups: grouping strategies by name, their coherence, and the `gene_groups.csv` contract
between 02_gene_clustering and training.

`gene_groups.csv` has columns `gene, group, strategy`: for each strategy, every gene of the
data in exactly one group. Strategies (`list_strategies()`, `make_groups(name, ...)`):
- `kmeans`: genes embedded by PCA then UMAP, KMeans on the embedding, K by silhouette or fixed;
- `prefix`: name families (MT-, RPL/RPS, LINC, ZNF, SLC, AC/AL clones, …), small ones → other;
- `correlation`: modules cut from a complete-linkage tree of 1 − r (gene–gene Pearson r);
- `file`: a user CSV `gene, group` (pathway or GO sets); genes it does not list → other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.gene_embedding import choose_k, embed_genes, fit_kmeans
from utils.io import write_with
from utils.paths import resolve

GROUP_COLUMNS = ("gene", "group", "strategy")
OTHER = "other"
# Name families, first match wins; regular expressions on the gene name.
PREFIXES = {"MT": r"^MT-", "RPL/RPS": r"^RP[LS]\d+[A-Z]?$|^RPLP\d$", "LINC": r"^LINC\d",
            "ZNF": r"^ZNF\d", "SLC": r"^SLC\d", "AC": r"^AC\d{6}\.\d+$", "AL": r"^AL\d{6}\.\d+$",
            "AP": r"^AP\d{6}\.\d+$", "HLA": r"^HLA-", "KRT": r"^KRT\d", "COL": r"^COL\d+A\d",
            "IG": r"^IG[HKL](?:V|D|J|C|G\d|A\d|M$|E$|LL)", "CD": r"^CD\d+[A-Z]?$", "S100": r"^S100"}


@dataclass(frozen=True)
class Grouping:
    """One strategy's answer: a group name per gene (in the data's gene order) and details."""

    strategy: str
    labels: np.ndarray
    info: dict = field(default_factory=dict)

    def sizes(self) -> pd.Series:
        """Genes per group, largest first."""
        return pd.Series(self.labels).value_counts()


# --- strategies -------------------------------------------------------------------------------

def name_by_size(ids: np.ndarray, prefix: str) -> np.ndarray:
    """Cluster ids → names prefix01, prefix02, … with 01 the largest cluster."""
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    rank = np.empty(len(uniq), dtype=int)
    rank[np.argsort(-counts, kind="stable")] = np.arange(1, len(uniq) + 1)
    width = max(2, len(str(len(uniq))))
    return np.char.add(prefix, np.char.zfill(rank[inverse].astype(str), width))


def merge_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Groups of fewer than min_size genes are merged into `other`."""
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return np.where(counts[inverse] < min_size, OTHER, labels).astype(str)


def group_kmeans(genes: Sequence[str], corr: np.ndarray, k: int | None = None,
                 k_range: tuple[int, int] = (4, 30), embedding: np.ndarray | None = None,
                 seed: int = 0, **embed_options) -> Grouping:
    """KMeans on the UMAP embedding of the genes; K fixed or the best silhouette in k_range."""
    if embedding is None:
        embedding = embed_genes(corr, seed=seed, **embed_options)
    scores = choose_k(embedding, k_range, seed) if k is None else {}
    k = max(scores, key=scores.get) if k is None else int(k)
    labels = name_by_size(fit_kmeans(embedding, k, seed), "k")
    return Grouping("kmeans", labels, {"k": k, "silhouette": scores})


def group_prefix(genes: Sequence[str], corr: np.ndarray | None = None,
                 prefixes: dict[str, str] | None = None, min_size: int = 10) -> Grouping:
    """Name families by regular expression (first match wins); small families → other."""
    prefixes = PREFIXES if prefixes is None else prefixes
    names = pd.Series(list(genes), dtype=str)
    masks = [names.str.contains(pattern, regex=True).to_numpy() for pattern in prefixes.values()]
    labels = np.select(masks, list(prefixes), OTHER) if masks else np.full(len(names), OTHER)
    return Grouping("prefix", merge_small(labels, min_size), {"prefixes": dict(prefixes)})


def group_correlation(genes: Sequence[str], corr: np.ndarray, n_modules: int = 20,
                      min_size: int = 10) -> Grouping:
    """Co-expression modules: complete-linkage tree on 1 − r cut into n_modules; modules of
    fewer than min_size genes → other (WGCNA's grey module)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    dist = np.clip(1.0 - corr.astype(np.float64), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="complete")
    ids = fcluster(tree, min(n_modules, len(corr)), criterion="maxclust")
    labels = merge_small(name_by_size(ids, "m"), min_size)
    return Grouping("correlation", labels, {"n_modules": n_modules})


def group_file(genes: Sequence[str], corr: np.ndarray | None = None,
               path: str | os.PathLike | None = None) -> Grouping:
    """Groups from a CSV with columns gene, group; unknown genes are an error listing them and
    genes the file does not list go to `other`."""
    if path is None:
        raise ValueError("strategy 'file' needs a CSV path (GROUPS_FILE) with columns gene, group")
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene groups file not found: {path}")
    table = pd.read_csv(path, dtype=str)
    if not {"gene", "group"} <= set(table.columns) or table[["gene", "group"]].isna().any().any():
        raise ValueError(f"{path}: needs columns gene, group with no empty cells; found "
                         f"columns {list(table.columns)}")
    unknown = sorted(set(table["gene"]) - set(genes))
    if unknown:
        more = f" and {len(unknown) - 50} more" if len(unknown) > 50 else ""
        raise ValueError(f"{path}: {len(unknown)} genes are not in the data: {unknown[:50]}"
                         f"{more}; keep only genes of train.csv's columns")
    pairs = table[["gene", "group"]].drop_duplicates()
    twice = sorted(pairs["gene"][pairs["gene"].duplicated()].unique())
    if twice:
        raise ValueError(f"{path}: {len(twice)} genes are in more than one group (keep one row "
                         f"per gene): {twice}")
    labels = pd.Series(list(genes)).map(pairs.set_index("gene")["group"])
    info = {"path": str(path), "unlisted": int(labels.isna().sum())}
    return Grouping("file", labels.fillna(OTHER).to_numpy(dtype=str), info)


STRATEGIES: dict[str, Callable[..., Grouping]] = {
    "kmeans": group_kmeans, "prefix": group_prefix, "correlation": group_correlation,
    "file": group_file}


def list_strategies() -> list[str]:
    """Names accepted by make_groups."""
    return list(STRATEGIES)


def make_groups(name: str, genes: Sequence[str], corr: np.ndarray | None = None,
                **options) -> Grouping:
    """Group the genes with strategy `name`; `corr` = correlate_genes(y) for kmeans/correlation."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown gene-grouping strategy {name!r}; choose from "
                         f"{list_strategies()}")
    if name in ("kmeans", "correlation") and corr is None:
        raise ValueError(f"strategy {name!r} needs corr=correlate_genes(y)")
    start = time.perf_counter()
    grouping = STRATEGIES[name](list(genes), corr, **options)
    grouping.info["seconds"] = round(time.perf_counter() - start, 3)
    return grouping


@dataclass(frozen=True)
class GeneClusteringConfig:
    """Parameters of notebooks/02_gene_clustering.ipynb (see its parameters cell)."""

    data_dir: str | None = None
    run_dir: str = "runs/genes"
    strategies: tuple[str, ...] = ("kmeans", "prefix", "correlation")
    k: int | None = None
    k_range: tuple[int, int] = (4, 30)
    n_pca: int = 50
    n_neighbors: int = 15
    neighbors: str = "exact"
    umap_epochs: int = 200
    n_modules: int = 20
    min_group_size: int = 10
    prefixes: dict[str, str] | None = None
    groups_file: str | None = None
    seed: int = 0
    smoke: bool = False

    def __post_init__(self):
        names = (self.strategies,) if isinstance(self.strategies, str) else tuple(self.strategies)
        if self.groups_file and "file" not in names:
            names += ("file",)
        unknown = [s for s in names if s not in STRATEGIES]
        if unknown or not names:
            raise ValueError(f"STRATEGIES {list(names)}: unknown {unknown}; choose from "
                             f"{list_strategies()}")
        if "file" in names and not self.groups_file:
            raise ValueError("strategy 'file' needs GROUPS_FILE, a CSV with columns gene, group")
        k_range = tuple(int(k) for k in self.k_range)
        epochs = self.umap_epochs
        if self.smoke:  # the quickest settings: four values of K, a short UMAP
            k_range, epochs = (k_range[0], min(k_range[1], k_range[0] + 3)), min(epochs, 50)
        for name, value in (("strategies", names), ("k_range", k_range), ("umap_epochs", epochs),
                            ("prefixes", dict(PREFIXES if self.prefixes is None else
                                              self.prefixes))):
            object.__setattr__(self, name, value)

    def embed_options(self) -> dict:
        """Keyword arguments of gene_embedding.embed_genes."""
        return {"n_pca": self.n_pca, "n_neighbors": self.n_neighbors, "seed": self.seed,
                "n_epochs": self.umap_epochs, "neighbors": self.neighbors}

    def options(self, strategy: str) -> dict:
        """Keyword arguments of make_groups for one strategy."""
        return {"kmeans": {"k": self.k, "k_range": self.k_range, "seed": self.seed},
                "prefix": {"prefixes": self.prefixes, "min_size": self.min_group_size},
                "correlation": {"n_modules": self.n_modules, "min_size": self.min_group_size},
                "file": {"path": self.groups_file}}[strategy]


def make_groupings(cfg: GeneClusteringConfig, genes: Sequence[str], corr: np.ndarray,
                   embedding: np.ndarray | None = None) -> dict[str, Grouping]:
    """Every strategy of the config; kmeans clusters `embedding` when given (no second UMAP)."""
    extra = {"kmeans": {"embedding": embedding, **cfg.embed_options()}}
    return {name: make_groups(name, genes, corr, **{**cfg.options(name), **extra.get(name, {})})
            for name in cfg.strategies}


# --- coherence --------------------------------------------------------------------------------

def _block_sums(corr: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group names, sizes and the groups × groups sums of r."""
    names, inverse = np.unique(labels, return_inverse=True)
    member = np.zeros((len(labels), len(names)), dtype=np.float32)
    member[np.arange(len(labels)), inverse] = 1.0
    blocks = member.T.astype(np.float64) @ (corr @ member)
    return names, member.sum(0).astype(np.float64), blocks


def group_coherence(corr: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per group: size, mean r between its genes (within_r) and to all other genes (between_r)."""
    names, n, blocks = _block_sums(corr, labels)
    inside = np.diag(blocks) - n
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.where(n > 1, inside / (n * (n - 1)), np.nan)
        between = (blocks.sum(1) - np.diag(blocks)) / (n * (len(labels) - n))
    table = pd.DataFrame({"group": names, "size": n.astype(int), "within_r": within,
                          "between_r": between})
    return table.sort_values("size", ascending=False, ignore_index=True)


def coherence_table(corr: np.ndarray, groupings: dict[str, Grouping]) -> pd.DataFrame:
    """Per strategy: groups, largest group, genes in `other`, mean r over gene pairs in the same
    group (within_r; within_named_r leaves out `other`), in different groups (between_r), and
    within_r − between_r (contrast)."""
    rows = []
    for name, grouping in groupings.items():
        names, n, blocks = _block_sums(corr, grouping.labels)
        inside, pairs = np.diag(blocks) - n, n * (n - 1)
        named, g = names != OTHER, len(grouping.labels)
        with np.errstate(invalid="ignore", divide="ignore"):
            within = inside.sum() / pairs.sum()
            between = (blocks.sum() - np.trace(blocks)) / (g * g - (n * n).sum())
            within_named = inside[named].sum() / pairs[named].sum()
        rows.append({"strategy": name, "groups": len(n), "largest": int(n.max()),
                     "other": int(n[~named].sum()), "within_r": within,
                     "within_named_r": within_named, "between_r": between,
                     "contrast": within - between})
    return pd.DataFrame(rows).set_index("strategy")


# --- the gene_groups.csv contract -------------------------------------------------------------

def write_gene_groups(path: str | os.PathLike, genes: Sequence[str],
                      groupings: dict[str, Grouping]) -> pd.DataFrame:
    """Write `gene, group, strategy` rows (every gene once per strategy) atomically."""
    genes = list(genes)
    for name, grouping in groupings.items():
        if len(grouping.labels) != len(genes):
            raise ValueError(f"strategy {name!r} labels {len(grouping.labels)} genes; the data "
                             f"has {len(genes)}")
    table = pd.concat([pd.DataFrame({"gene": genes, "group": g.labels, "strategy": name})
                       for name, g in groupings.items()], ignore_index=True)
    write_with(resolve(path), lambda tmp: table.to_csv(tmp, index=False))
    return table


def load_gene_groups(path: str | os.PathLike, genes: list[str],
                     strategy: str) -> dict[str, np.ndarray]:
    """Group name → column indices into `genes`, for one strategy of a gene_groups.csv."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene groups file not found: {path} (written by "
                                "notebooks/02_gene_clustering.ipynb under its RUN_DIR)")
    table = pd.read_csv(path, dtype=str)
    if tuple(table.columns[:3]) != GROUP_COLUMNS:
        raise ValueError(f"{path}: columns must be {', '.join(GROUP_COLUMNS)}; found "
                         f"{list(table.columns)}")
    rows = table[table["strategy"] == strategy]
    if rows.empty:
        raise ValueError(f"{path}: no strategy {strategy!r}; it has "
                         f"{sorted(table['strategy'].unique())}")
    missing = sorted(set(genes) - set(rows["gene"]))
    unknown = sorted(set(rows["gene"]) - set(genes))
    duplicated = sorted(rows["gene"][rows["gene"].duplicated()].unique())
    if missing or unknown or duplicated:
        raise ValueError(f"{path} (strategy {strategy!r}) does not assign every gene once: "
                         f"{len(missing)} genes missing {missing[:10]}, {len(unknown)} unknown "
                         f"{unknown[:10]}, {len(duplicated)} duplicated {duplicated[:10]}")
    index = pd.Series(np.arange(len(genes)), index=genes)
    return {name: np.sort(index[part["gene"]].to_numpy())
            for name, part in rows.groupby("group", sort=True)}
