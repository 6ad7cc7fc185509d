"""02_gene_clustering: group the genes by strategy, measure how coherent the groups are, and the
`gene_groups.csv` contract between 02 and training (05), Grad-CAM (06) and blending (07).

`gene_groups.csv` has columns `gene, group, strategy`: for each strategy, every gene of the
data in exactly one group. Beside it, `gene_groups.json` holds each strategy's settings
(`grouping_settings`): 05 and 07 refit a strategy that reads the targets on each fold's
training rows with them (`read_grouping_settings`, `groups_on_rows`).

Strategies (`list_strategies()`, `make_groups(name, ...)`):
- `kmeans`: genes embedded by PCA then UMAP, KMeans on the embedding, K by silhouette or fixed;
- `prefix`: name families (MT-, RPL/RPS, LINC, ZNF, SLC, AC/AL clones, …), small ones → other;
- `correlation`: modules cut from a complete-linkage tree of 1 − r (gene–gene Pearson r);
- `file`: a user CSV `gene, group` (pathway or GO sets); genes it does not list → other;
- `functional`: gene sets in GMT files (MSigDB, Enrichr, GO exports; files or folders) or
  Enrichr libraries fetched once by gseapy into the cache, one group per gene
  (`utils.genesets`).

Genes as points: the gene–gene correlation matrix is one matrix product; PCA comes from it by
subspace iteration; UMAP gets exact neighbours from it (or runs its approximate
nearest-neighbour descent), never its slow all-pairs path for < 4096 points. At DACON scale
(3467 genes × 6992 spots) that takes seconds.

Coherence: `within_between` is the one statistic the kit uses to say whether a grouping holds
together, here on gene–gene expression correlation and in 06 on Grad-CAM map similarity.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.choices import GENE_PREFIXES, OTHER
from utils.config import GeneClusteringConfig
from utils.files import read_json, write_csv, write_json
from utils.genesets import functional_labels
from utils.places import resolve
from utils.plots import figure

GROUP_COLUMNS = ("gene", "group", "strategy")


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
    prefixes = GENE_PREFIXES if prefixes is None else prefixes
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


def group_functional(genes: Sequence[str], corr: np.ndarray,
                     sources: str | Sequence[str] | None = None, min_size: int = 10,
                     unmatched: str = "other", cache_dir: str | os.PathLike | None = None
                     ) -> Grouping:
    """Groups from gene sets: GMT files, folders, Enrichr libraries (`utils.genesets`)."""
    return Grouping("functional", *functional_labels(genes, corr, sources, min_size, unmatched,
                                                      cache_dir))


STRATEGIES: dict[str, Callable[..., Grouping]] = {
    "kmeans": group_kmeans, "prefix": group_prefix, "correlation": group_correlation,
    "file": group_file, "functional": group_functional}


def list_strategies() -> list[str]:
    """Names accepted by make_groups."""
    return list(STRATEGIES)


def make_groups(name: str, genes: Sequence[str], corr: np.ndarray | None = None,
                **options) -> Grouping:
    """Group the genes with strategy `name`; `corr` = correlate_genes(y) for kmeans/correlation."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown gene-grouping strategy {name!r}; choose from "
                         f"{list_strategies()}")
    if name in ("kmeans", "correlation", "functional") and corr is None:
        raise ValueError(f"strategy {name!r} needs corr=correlate_genes(y)")
    start = time.perf_counter()
    grouping = STRATEGIES[name](list(genes), corr, **options)
    grouping.info["seconds"] = round(time.perf_counter() - start, 3)
    return grouping




def cluster_genes(cfg: GeneClusteringConfig, y: np.ndarray, genes: Sequence[str]) -> dict:
    """Gene–gene correlation, the UMAP embedding and every strategy of the config, with the
    seconds of each step (numba's one-off compile of UMAP timed apart)."""
    seconds = {"numba compile (once per kernel)": warm_up_umap(cfg.neighbors)}
    start = time.perf_counter()
    corr = correlate_genes(y)
    seconds["correlation"] = time.perf_counter() - start
    start = time.perf_counter()
    embedding = embed_genes(corr, **cfg.embed_options())
    seconds["PCA + UMAP"] = time.perf_counter() - start
    groupings = make_groupings(cfg, genes, corr, embedding)
    seconds.update({name: g.info["seconds"] for name, g in groupings.items()})
    return {"corr": corr, "embedding": embedding, "groupings": groupings, "seconds": seconds,
            "settings": grouping_settings(cfg)}


def grouping_settings(cfg: GeneClusteringConfig) -> dict[str, dict]:
    """Per strategy, what refits its groups on other rows: its `make_groups` options and, for
    kmeans, the embedding's (`embed_genes`); 02 writes them as gene_groups.json."""
    return {name: {"options": cfg.options(name),
                   **({"embedding": cfg.embed_options()} if name == "kmeans" else {})}
            for name in cfg.strategies}


def write_clustering(folder: str | os.PathLike, genes: Sequence[str], clustering: dict) -> dict:
    """gene_groups.csv with its settings (gene_groups.json), gene_embedding.csv and
    groupings.json in `folder`; returns each strategy's groups as training reads them back
    (`load_gene_groups`)."""
    folder = resolve(folder)
    groupings = clustering["groupings"]
    write_json(settings_file(folder / "gene_groups.csv"), clustering["settings"])
    write_gene_groups(folder / "gene_groups.csv", genes, groupings)
    embedding = pd.DataFrame(clustering["embedding"], columns=["umap_1", "umap_2"])
    write_csv(folder / "gene_embedding.csv", embedding.assign(gene=list(genes)))
    write_json(folder / "groupings.json", {name: g.info for name, g in groupings.items()})
    return {name: load_gene_groups(folder / "gene_groups.csv", list(genes), name)
            for name in groupings}


def describe_groupings(groupings: dict[str, dict[str, np.ndarray]]) -> str:
    """One line per strategy: its number of groups and their sizes, largest first."""
    return "\n".join(f"{name}: {len(groups)} groups, sizes "
                     f"{sorted(map(len, groups.values()), reverse=True)}"
                     for name, groups in groupings.items())


LABEL_FREE = ("prefix", "file")  # strategies that never read the targets


def groups_on_rows(settings: dict, strategy: str, genes: Sequence[str],
                   y: np.ndarray) -> dict[str, np.ndarray]:
    """One strategy's groups (group → gene columns) computed on these target rows only, with
    the settings 02 made it with (`read_grouping_settings`): how training makes fold-aware
    groups from a fold's training rows."""
    corr = correlate_genes(y)
    options = dict(settings["options"])
    if "embedding" in settings:  # kmeans: the same embedding settings as 02
        options["embedding"] = embed_genes(corr, **settings["embedding"])
    grouping = make_groups(strategy, genes, corr, **options)
    names, inverse = np.unique(grouping.labels, return_inverse=True)
    return {name: np.flatnonzero(inverse == i) for i, name in enumerate(names)}


def settings_file(gene_groups: str | os.PathLike) -> Path:
    """The settings file beside a gene_groups CSV: the same name ending in .json."""
    return resolve(gene_groups).with_suffix(".json")


def read_grouping_settings(gene_groups: str | os.PathLike, strategy: str) -> dict:
    """How `strategy`'s groups in a gene_groups CSV were made (`grouping_settings`, written
    beside it by 02), to refit them on each fold's training rows."""
    path = settings_file(gene_groups)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: GROUP_STRATEGY={strategy!r} reads the targets, so its groups are "
            f"refitted on each fold's training rows with the settings 02_gene_clustering writes "
            f"beside {Path(gene_groups).name}; run 02_gene_clustering (with {strategy!r} in "
            f"STRATEGIES, RUN_DIR={str(path.parent)!r}), or use a strategy that reads no targets "
            f"({', '.join(LABEL_FREE)})")
    settings = read_json(path)
    if strategy not in settings:
        raise ValueError(f"{path} holds the settings of {sorted(settings)}, not of "
                         f"GROUP_STRATEGY={strategy!r}: run 02_gene_clustering with {strategy!r} "
                         "in STRATEGIES")
    return settings[strategy]


def make_groupings(cfg: GeneClusteringConfig, genes: Sequence[str], corr: np.ndarray,
                   embedding: np.ndarray | None = None) -> dict[str, Grouping]:
    """Every strategy of the config; kmeans clusters `embedding` when given (no second UMAP)."""
    extra = {"kmeans": {"embedding": embedding, **cfg.embed_options()}}
    return {name: make_groups(name, genes, corr, **{**cfg.options(name), **extra.get(name, {})})
            for name in cfg.strategies}


# --- coherence --------------------------------------------------------------------------------

def label_sums(sim: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group names, and the groups × groups sums and counts of the finite off-diagonal entries
    of a genes × genes similarity matrix (correlation of expression, or of CAMs)."""
    names, inverse = np.unique(np.asarray(labels), return_inverse=True)
    member = np.zeros((len(inverse), len(names)), dtype=np.float32)
    member[np.arange(len(inverse)), inverse] = 1.0
    known = np.isfinite(sim)
    np.fill_diagonal(known, False)
    values = np.where(known, sim, 0.0).astype(np.float32)
    sums = member.T.astype(np.float64) @ (values @ member)
    counts = member.T.astype(np.float64) @ (known.astype(np.float32) @ member)
    return names, sums, counts


def _pair_means(sim: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """Mean similarity over pairs (i ≠ j) with the same label and with different labels, and the
    number of such pairs."""
    _, sums, counts = label_sums(sim, labels)
    n_within, n_all = np.trace(counts), counts.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.trace(sums) / n_within, (sums.sum() - np.trace(sums)) / (n_all - n_within),
                int(n_within) // 2, int(n_all - n_within) // 2)


def within_between(sim: np.ndarray, labels: np.ndarray, n_permutations: int = 0,
                   seed: int = 0, leave_out: Sequence[str] = (OTHER,)) -> dict:
    """Mean similarity of genes within and between groups (genes in `leave_out` dropped),
    their difference, and the permutation p-value of the difference (labels shuffled among
    genes). NaN similarities (undefined) are left out of every mean."""
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


def by_group(sim: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per group: genes, mean similarity among its genes (within) and to every other gene
    (between); NaN where a group has no pair."""
    names, sums, counts = label_sums(sim, labels)
    inside, n_inside = np.diag(sums), np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = inside / n_inside
        between = (sums.sum(1) - inside) / (counts.sum(1) - n_inside)
    sizes = np.unique(np.asarray(labels), return_counts=True)[1]
    return pd.DataFrame({"group": names, "genes": sizes, "within": within, "between": between})


def group_coherence(corr: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per group: size, mean r between its genes (within_r) and to all other genes (between_r)."""
    table = by_group(corr, labels).rename(columns={"genes": "size", "within": "within_r",
                                                  "between": "between_r"})
    return table.sort_values("size", ascending=False, ignore_index=True)


def coherence_table(corr: np.ndarray, groupings: dict[str, Grouping]) -> pd.DataFrame:
    """Per strategy: groups, largest group, genes in `other`, mean r over gene pairs in the same
    group (within_r; within_named_r leaves out `other`), in different groups (between_r), and
    within_r − between_r (contrast)."""
    rows = []
    for name, grouping in groupings.items():
        labels = np.asarray(grouping.labels)
        sizes = grouping.sizes()
        within, between, _, _ = _pair_means(corr, labels)
        named = labels != OTHER
        within_named = _pair_means(corr[np.ix_(named, named)], labels[named])[0]
        rows.append({"strategy": name, "groups": len(sizes), "largest": int(sizes.max()),
                     "other": int(sizes.get(OTHER, 0)), "within_r": within,
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
    write_csv(resolve(path), table)
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


# --- genes as points: correlation, PCA, UMAP, K by silhouette ------------------------------

def correlate_genes(y: np.ndarray) -> np.ndarray:
    """Gene–gene Pearson r (float32, genes × genes) across spots; a constant gene has r = 0."""
    y = np.asarray(y, dtype=np.float32)
    z = y - y.mean(axis=0, dtype=np.float64).astype(np.float32)
    norm = np.sqrt(np.einsum("ij,ij->j", z, z))
    z /= np.where(norm > 0, norm, np.inf)
    corr = np.clip(z.T @ z, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def pca_genes(corr: np.ndarray, n: int = 50, seed: int = 0) -> np.ndarray:
    """Principal-component scores of the standardised genes (genes × n), from their correlation
    matrix by randomized subspace iteration: no pass over the spots."""
    from threadpoolctl import threadpool_limits

    n = min(n, len(corr) - 1)
    # One BLAS thread: small QRs stall for seconds when threads spin on a busy, shared CPU.
    with threadpool_limits(1, user_api="blas"):
        if len(corr) <= 4 * (n + 10):
            w, v = np.linalg.eigh(corr.astype(np.float64))
        else:
            q = np.random.default_rng(seed).standard_normal((len(corr), n + 10))
            q = q.astype(np.float32)
            for _ in range(5):
                q = np.linalg.qr(corr @ q)[0]
            w, v = np.linalg.eigh((q.T @ corr @ q).astype(np.float64))
            v = q @ v
    top = np.argsort(w)[::-1][:n]
    return (v[:, top] * np.sqrt(np.clip(w[top], 0, None))).astype(np.float32)


def knn_from_corr(corr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest genes (self first) by correlation distance sqrt(2·(1 − r))."""
    dist = np.sqrt(np.clip(2.0 * (1.0 - corr), 0.0, None))
    np.fill_diagonal(dist, 0.0)
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    near = np.take_along_axis(dist, idx, axis=1)
    order = np.argsort(near, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(near, order, 1)


def embed_genes(corr: np.ndarray, n_components: int = 2, n_pca: int = 50, n_neighbors: int = 15,
                n_epochs: int = 200, neighbors: str = "exact", seed: int = 0) -> np.ndarray:
    """UMAP coordinates of the genes (genes × n_components) after PCA.

    neighbors="exact": kNN by correlation from `corr` (cheap: it is already computed);
    "approx": UMAP's nearest-neighbour descent on the PCA scores. Either way UMAP skips its
    all-pairs path for fewer than 4096 points, which is slow.
    """
    import umap

    if neighbors not in ("exact", "approx"):
        raise ValueError(f"neighbors must be 'exact' or 'approx'; got {neighbors!r}")
    k = min(n_neighbors, len(corr) - 1)
    scores = pca_genes(corr, n_pca, seed)
    knn = knn_from_corr(corr, k) if neighbors == "exact" else (None, None, None)
    model = umap.UMAP(n_neighbors=k, n_components=n_components, n_epochs=n_epochs,
                      min_dist=0.0, random_state=seed, n_jobs=1, precomputed_knn=knn,
                      force_approximation_algorithm=True)
    with warnings.catch_warnings():  # "transform will be unavailable": we never transform
        warnings.filterwarnings("ignore", message="precomputed_knn")
        return model.fit_transform(scores).astype(np.float32)



def fit_kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """KMeans labels (0..k-1) of the rows of x."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # One thread: OpenMP on a few thousand 2-D points is ~50x slower on a busy, shared CPU.
    with threadpool_limits(1):
        return KMeans(k, n_init=4, random_state=seed).fit_predict(x)




def silhouette(x: np.ndarray, labels: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Mean silhouette (Euclidean) of a labelling, on at most max_points random rows."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return 0.0
    size = min(max_points, len(x)) if len(x) > max_points else None
    return float(silhouette_score(x, labels, sample_size=size, random_state=seed))


def choose_k(embedding: np.ndarray, k_range: tuple[int, int], seed: int = 0) -> dict[int, float]:
    """Silhouette of KMeans on the embedding for every K in k_range (inclusive), on one sample
    of at most 2000 genes (sklearn's silhouette on distances computed once)."""
    from sklearn.metrics import pairwise_distances, silhouette_score

    low, high = int(k_range[0]), min(int(k_range[1]), len(embedding) - 1)
    if low < 2 or low > high:
        raise ValueError(f"K range must satisfy 2 <= min <= max < number of genes; got {k_range}")
    rows = np.arange(len(embedding))
    if len(rows) > 2000:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), 2000, replace=False))
    dist = pairwise_distances(np.asarray(embedding[rows], dtype=np.float64))
    scores = {}
    for k in range(low, high + 1):
        labels = fit_kmeans(embedding, k, seed)[rows]
        scores[k] = (float(silhouette_score(dist, labels, metric="precomputed"))
                     if len(np.unique(labels)) > 1 else 0.0)
    return scores


def warm_up_umap(neighbors: str = "exact") -> float:
    """Compile UMAP's numba code (and NN-descent's for "approx") on a tiny problem, once per
    kernel; returns the seconds taken, so the real embedding can be timed without them."""
    import time

    start = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((40, 60)).astype(np.float32)
    embed_genes(correlate_genes(x), n_pca=5, n_neighbors=5, n_epochs=5, neighbors=neighbors)
    return time.perf_counter() - start


# --- figures --------------------------------------------------------------------------------

OTHER_COLOUR = "#d0d0d0"


def plot_silhouette(scores: dict[int, float], k: int):
    """Silhouette of KMeans on the gene embedding against K, the chosen K marked."""
    fig, ax = figure(5, 3)
    ax.plot(list(scores), list(scores.values()), "o-")
    ax.axvline(k, color="k", ls=":", label=f"K = {k}")
    ax.set(xlabel="K (clusters)", ylabel="mean silhouette", title="choosing K")
    ax.legend()
    return fig


def plot_gene_umap(embedding: np.ndarray, groupings: dict, max_legend: int = 14):
    """The genes' UMAP embedding, one panel per strategy, coloured by group (`other` grey)."""
    fig, axes = figure(4.6 * len(groupings), 4.6, ncols=len(groupings), squeeze=False)
    for ax, (name, grouping) in zip(axes[0], groupings.items()):
        labels = np.asarray(grouping.labels)
        sizes = pd.Series(labels).value_counts()
        other = labels == "other"
        if other.any():
            ax.scatter(*embedding[other].T, s=3, c=OTHER_COLOUR, label="other")
        for j, group in enumerate(g for g in sizes.index if g != "other"):
            ax.scatter(*embedding[labels == group].T, s=3, color=f"C{j % 10}",
                       marker="os^D"[j // 10 % 4], label=group if j < max_legend else None)
        ax.set(title=f"{name}: {len(sizes)} groups", xticks=[], yticks=[])
        ax.legend(fontsize="x-small", markerscale=3, loc="best", ncols=2)
    return fig


def plot_group_coherence(tables: dict[str, pd.DataFrame]):
    """Within-group mean r against group size, per strategy (coherent groups sit high)."""
    fig, ax = figure(6, 4)
    for j, (name, table) in enumerate(tables.items()):
        ax.scatter(table["size"], table["within_r"], s=20, color=f"C{j}", label=name, alpha=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="genes in the group", ylabel="mean r within the group",
           title="group coherence")
    ax.legend()
    return fig
