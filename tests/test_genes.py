"""Gene grouping: correlation, PCA, kNN and silhouette against direct computations; every
strategy recovers planted groups; the gene_groups.csv contract; 02_gene_clustering (smoke)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from utils import genes, genesets
from utils.choices import GENE_PREFIXES
from utils.config import GeneClusteringConfig
from utils.genes import correlate_genes, embed_genes, knn_from_corr, pca_genes, silhouette

PLANTED = {"MT": 12, "RPL": 10, "ZNF": 8}  # family → genes; each family shares one factor


def make_planted(n_spots: int = 300, noise: float = 0.6, seed: int = 0):
    """Expression with three planted gene groups (one latent factor each), names by family."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(PLANTED)), list(PLANTED.values()))
    factors = rng.standard_normal((n_spots, len(PLANTED)))
    y = factors[:, truth] * rng.uniform(0.8, 1.2, len(truth)) + noise * rng.standard_normal(
        (n_spots, len(truth)))
    names = [f"{'MT-' if f == 'MT' else f}{i + 1}" for f, n in PLANTED.items() for i in range(n)]
    return (y + 3).astype(np.float32), names, truth


@pytest.fixture(scope="module")
def planted():
    y, names, truth = make_planted()
    return {"y": y, "genes": names, "truth": truth, "corr": correlate_genes(y)}


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """True if the two labellings split the genes identically (names may differ)."""
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(truth, labels) == 1.0


# --- correlation, PCA, neighbours, silhouette -------------------------------------------------

def test_correlate_genes_matches_numpy_and_zeroes_constant_genes():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((50, 6)).astype(np.float32)
    y[:, 2] = 4.0
    corr = correlate_genes(y)
    expected = np.corrcoef(np.delete(y, 2, axis=1), rowvar=False)
    np.testing.assert_allclose(np.delete(np.delete(corr, 2, 0), 2, 1), expected, atol=1e-5)
    assert corr[2, 2] == 1.0 and np.all(np.delete(corr[2], 2) == 0)


@pytest.mark.parametrize("n_genes", [40, 300])  # exact eigh and randomized subspace paths
def test_pca_genes_variances_match_the_top_eigenvalues(n_genes):
    y = make_planted(n_spots=200)[0]
    y = np.hstack([y, np.random.default_rng(2).standard_normal((200, n_genes - y.shape[1]))])
    corr = correlate_genes(y)
    scores = pca_genes(corr, n=5)
    top = np.sort(np.linalg.eigvalsh(corr.astype(np.float64)))[::-1][:5]
    variances = (scores.astype(np.float64) ** 2).sum(0)
    np.testing.assert_allclose(variances[:3], top[:3], rtol=1e-3)  # the planted factors: exact
    assert (variances <= top * (1 + 1e-5)).all() and (variances >= 0.95 * top).all()  # noise


def test_knn_from_corr_is_the_brute_force_neighbours(planted):
    corr = planted["corr"]
    idx, dist = knn_from_corr(corr, 5)
    full = np.sqrt(np.clip(2 * (1 - corr.astype(np.float64)), 0, None))
    np.fill_diagonal(full, 0)
    assert (idx[:, 0] == np.arange(len(corr))).all() and (dist[:, 0] == 0).all()
    assert (np.diff(dist, axis=1) >= 0).all()
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], atol=1e-5)


def test_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(c, 1.0, (30, 2)) for c in (0, 3, 6)])
    labels = np.r_[np.repeat([0, 1, 2], 30)]
    labels[:3] = 1  # some misassigned points
    assert silhouette(x, labels) == pytest.approx(silhouette_score(x, labels), abs=1e-9)


# "approx" compiles pynndescent's NN-descent in every fresh process (~40 s): smoke tier.
@pytest.mark.parametrize("neighbors", ["exact", pytest.param("approx", marks=pytest.mark.smoke)])
def test_embed_genes_keeps_planted_groups_apart(planted, neighbors):
    emb = embed_genes(planted["corr"], n_neighbors=5, n_epochs=100, neighbors=neighbors)
    assert emb.shape == (len(planted["genes"]), 2) and np.isfinite(emb).all()
    centres = np.array([emb[planted["truth"] == g].mean(0) for g in range(3)])
    spread = max(np.linalg.norm(emb[planted["truth"] == g] - centres[g], axis=1).max()
                 for g in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a)]
    assert min(gaps) > spread


def test_embed_genes_rejects_an_unknown_neighbour_method(planted):
    with pytest.raises(ValueError, match="neighbors must be 'exact' or 'approx'"):
        embed_genes(planted["corr"], neighbors="fast")


# --- strategies -------------------------------------------------------------------------------

def test_kmeans_finds_k_and_the_planted_groups(planted):
    g = genes.make_groups("kmeans", planted["genes"], planted["corr"], k_range=(2, 6),
                          n_neighbors=5, n_epochs=100)
    assert g.info["k"] == 3 and set(g.info["silhouette"]) == {2, 3, 4, 5, 6}
    assert same_partition(g.labels, planted["truth"])
    fixed = genes.make_groups("kmeans", planted["genes"], planted["corr"], k=5,
                              n_neighbors=5, n_epochs=100)
    assert len(set(fixed.labels)) == 5 and fixed.info["silhouette"] == {}


def test_correlation_modules_are_the_planted_groups(planted):
    g = genes.make_groups("correlation", planted["genes"], planted["corr"], n_modules=3,
                          min_size=2)
    assert same_partition(g.labels, planted["truth"])
    assert g.sizes().to_dict() == {"m01": 12, "m02": 10, "m03": 8}


def test_prefix_finds_families_and_merges_small_ones():
    names = ["MT-CO1", "MT-ND1", "MT-ATP6", "RPL3", "RPS4X", "RPLP0", "RPS6KA1", "LINC00152",
             "AC004556.1", "ACTB", "ZNF5", "ZNF10"]
    g = genes.make_groups("prefix", names, min_size=2)
    assert dict(zip(names, g.labels)) == {
        "MT-CO1": "MT", "MT-ND1": "MT", "MT-ATP6": "MT", "RPL3": "RPL/RPS", "RPS4X": "RPL/RPS",
        "RPLP0": "RPL/RPS", "RPS6KA1": "other", "LINC00152": "other", "AC004556.1": "other",
        "ACTB": "other", "ZNF5": "ZNF", "ZNF10": "ZNF"}
    custom = genes.make_groups("prefix", names, prefixes={"A": "^A"}, min_size=1)
    assert (custom.labels == np.where(np.char.startswith(names, "A"), "A", "other")).all()


def test_file_groups_unlisted_genes_go_to_other(tmp_path, planted):
    path = tmp_path / "sets.csv"
    pd.DataFrame({"gene": ["MT-1", "MT-2", "ZNF1"], "group": ["mito", "mito", "zinc"],
                  "source": ["GO", "GO", "GO"]}).to_csv(path, index=False)
    g = genes.make_groups("file", planted["genes"], path=path)
    assert dict(zip(planted["genes"][:2], g.labels[:2])) == {"MT-1": "mito", "MT-2": "mito"}
    assert g.sizes().to_dict() == {"other": 27, "mito": 2, "zinc": 1}
    assert g.info["unlisted"] == 27


def test_file_rejects_unknown_genes_listing_them(tmp_path, planted):
    path = tmp_path / "sets.csv"
    pd.DataFrame({"gene": ["MT-1", "NOPE1", "NOPE2"], "group": ["a", "a", "b"]}).to_csv(path)
    with pytest.raises(ValueError, match=r"2 genes are not in the data: \['NOPE1', 'NOPE2'\];"):
        genes.make_groups("file", planted["genes"], path=path)
    many = pd.DataFrame({"gene": [f"X{i:03d}" for i in range(60)], "group": "a"})
    many.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"60 genes are not.*'X049'\] and 10 more"):
        genes.make_groups("file", planted["genes"], path=path)
    pd.DataFrame({"gene": ["MT-1", "MT-1"], "group": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"more than one group.*\['MT-1'\]"):
        genes.make_groups("file", planted["genes"], path=path)
    pd.DataFrame({"name": ["MT-1"], "set": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="needs columns gene, group"):
        genes.make_groups("file", planted["genes"], path=path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        genes.make_groups("file", planted["genes"], path=tmp_path / "missing.csv")


def test_registry_errors_name_the_choices(planted):
    assert genes.list_strategies() == ["kmeans", "prefix", "correlation", "file", "functional"]
    with pytest.raises(ValueError, match=r"unknown gene-grouping strategy 'wgcna'.*kmeans"):
        genes.make_groups("wgcna", planted["genes"])
    with pytest.raises(ValueError, match="needs corr"):
        genes.make_groups("correlation", planted["genes"])
    with pytest.raises(ValueError, match="'functional' needs corr"):
        genes.make_groups("functional", planted["genes"], sources=["x.gmt"])


def test_every_gene_is_in_exactly_one_group_per_strategy(tmp_path, planted):
    sets = tmp_path / "sets.csv"
    pd.DataFrame({"gene": ["MT-1", "RPL2"], "group": ["x", "y"]}).to_csv(sets, index=False)
    gmt = write_gmt(tmp_path / "sets.gmt", {"mito": ["MT-1", "MT-2", "MT-3", "RPL1"]})
    cfg = GeneClusteringConfig(k_range=(2, 5), n_neighbors=5, umap_epochs=60,
                                     min_group_size=3, groups_file=str(sets),
                                     gene_sets=[str(gmt)])
    groupings = genes.make_groupings(cfg, planted["genes"], planted["corr"])
    assert list(groupings) == ["kmeans", "prefix", "correlation", "file", "functional"]
    assert groupings["functional"].sizes().to_dict() == {"other": 26, "mito": 4}
    table = genes.write_gene_groups(tmp_path / "gene_groups.csv", planted["genes"], groupings)
    assert len(table) == 5 * len(planted["genes"])
    for name, grouping in groupings.items():
        loaded = genes.load_gene_groups(tmp_path / "gene_groups.csv", planted["genes"], name)
        members = np.sort(np.concatenate(list(loaded.values())))
        assert (members == np.arange(len(planted["genes"]))).all(), name
        assert {k: len(v) for k, v in loaded.items()} == grouping.sizes().to_dict()


def test_write_gene_groups_rejects_a_short_labelling(tmp_path, planted):
    short = {"prefix": genes.Grouping("prefix", np.array(["a", "b"]))}
    with pytest.raises(ValueError, match="labels 2 genes; the data has 30"):
        genes.write_gene_groups(tmp_path / "g.csv", planted["genes"], short)
    assert not (tmp_path / "g.csv").exists()


def test_load_gene_groups_reports_missing_and_unknown_genes(tmp_path):
    path = tmp_path / "gene_groups.csv"
    pd.DataFrame({"gene": ["A", "B", "Z"], "group": ["g1", "g1", "g2"],
                  "strategy": ["s"] * 3}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"1 genes missing \['C'\], 1 unknown \['Z'\]"):
        genes.load_gene_groups(path, ["A", "B", "C"], "s")
    with pytest.raises(ValueError, match="no strategy 'kmeans'"):
        genes.load_gene_groups(path, ["A", "B", "Z"], "kmeans")
    assert {k: v.tolist() for k, v in genes.load_gene_groups(path, ["Z", "A", "B"], "s").items()
            } == {"g1": [1, 2], "g2": [0]}


def _today(cfg: GeneClusteringConfig, strategy: str, names, y) -> dict[str, list[int]]:
    """A strategy's groups on rows `y` straight from 02's config (what a fold's refit must be)."""
    corr = correlate_genes(y)
    extra = {"embedding": embed_genes(corr, **cfg.embed_options())} if strategy == "kmeans" else {}
    labels = genes.make_groups(strategy, names, corr, **cfg.options(strategy), **extra).labels
    return {g: np.flatnonzero(labels == g).tolist() for g in np.unique(labels)}


def test_the_settings_beside_gene_groups_refit_each_strategy_as_02_made_it(tmp_path, planted):
    """02 writes gene_groups.json beside gene_groups.csv; refitting a strategy that reads the
    targets on other rows from that file gives the groups 02's own config would give."""
    cfg = GeneClusteringConfig(strategies=["kmeans", "correlation", "prefix"], k_range=(2, 4),
                               n_neighbors=5, umap_epochs=40, n_modules=3, min_group_size=2,
                               seed=3)
    clustering = genes.cluster_genes(cfg, planted["y"], planted["genes"])
    genes.write_clustering(tmp_path, planted["genes"], clustering)
    assert json.loads((tmp_path / "gene_groups.json").read_text()) == json.loads(
        json.dumps(genes.grouping_settings(cfg)))
    rows = planted["y"][::2]  # a fold's training rows
    for strategy in ("kmeans", "correlation"):
        settings = genes.read_grouping_settings(tmp_path / "gene_groups.csv", strategy)
        refit = genes.groups_on_rows(settings, strategy, planted["genes"], rows)
        assert {g: c.tolist() for g, c in refit.items()} == _today(cfg, strategy,
                                                                    planted["genes"], rows)


def test_a_label_based_strategy_without_its_settings_file_says_what_to_run(tmp_path, planted):
    csv = tmp_path / "gene_groups.csv"
    genes.write_gene_groups(csv, planted["genes"], {"correlation": genes.Grouping(
        "correlation", np.array(["a"] * len(planted["genes"])))})
    with pytest.raises(FileNotFoundError) as err:
        genes.read_grouping_settings(csv, "correlation")
    message = str(err.value)
    assert str(tmp_path / "gene_groups.json") in message and "run 02_gene_clustering" in message
    (tmp_path / "gene_groups.json").write_text(json.dumps({"prefix": {"options": {}}}))
    with pytest.raises(ValueError, match="not of GROUP_STRATEGY='correlation'"):
        genes.read_grouping_settings(csv, "correlation")


# --- functional gene sets ----------------------------------------------------------------------

def write_gmt(path, sets: dict[str, list[str]], newline: str = "\n"):
    """A GMT file: one `name, description, genes…` line per set."""
    path.write_text("".join(f"{name}\tmade by the test\t" + "\t".join(members) + newline
                            for name, members in sets.items()))
    return path


def test_read_gmt_keeps_each_gene_once_and_drops_enrichr_weights(tmp_path):
    path = tmp_path / "lib.gmt"
    path.write_text("A\thttps://www.gsea-msigdb.org/gsea/msigdb\tTP53\tEGFR,1.0\tTP53\t\r\n"
                    "\nB\t\tMYC\n")
    assert genesets.read_gmt(path) == {"A": ["TP53", "EGFR"], "B": ["MYC"]}


@pytest.mark.parametrize("text, message", [
    ("A\td\tX\nB d X Y\n", r"bad.gmt, line 2: a GMT line is name<TAB>description"),
    ("A\td\n", r"bad.gmt, line 1: .*at least one gene"),
    ("A\td\tX\n\nA\td\tY\n", r"bad.gmt, line 3: gene set 'A' again \(first on line 1\)"),
    ("\n\n", r"bad.gmt: no gene sets")])
def test_read_gmt_names_the_file_and_line_of_a_malformed_set(tmp_path, text, message):
    (tmp_path / "bad.gmt").write_text(text)
    with pytest.raises(ValueError, match=message):
        genesets.read_gmt(tmp_path / "bad.gmt")


def test_load_gene_sets_reads_files_folders_and_cached_libraries(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "sets"
    folder.mkdir()
    write_gmt(folder / "b.gmt", {"S2": ["Y"]})
    write_gmt(folder / "a.gmt", {"S1": ["X"]})
    cached = tmp_path / "cache" / "enrichr-human" / "MSigDB_Hallmark_2020.gmt"
    cached.parent.mkdir(parents=True)
    write_gmt(cached, {"Hypoxia": ["VEGFA"]})
    libraries = genesets.load_gene_sets([str(folder), "MSigDB_Hallmark_2020"], tmp_path / "cache")
    assert list(libraries) == ["a", "b", "MSigDB_Hallmark_2020"]
    assert libraries["MSigDB_Hallmark_2020"] == (cached, {"Hypoxia": ["VEGFA"]})
    with pytest.raises(FileNotFoundError, match="gene-set file not found: .*missing.gmt"):
        genesets.load_gene_sets(str(tmp_path / "missing.gmt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .gmt files in the folder"):
        genesets.load_gene_sets([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="neither a GMT file, a folder nor an Enrichr"):
        genesets.load_gene_sets(["GO Biological Process"])


def test_best_sets_prefers_the_most_correlated_set_and_dissolves_small_ones():
    corr = np.eye(6, dtype=np.float32)
    for a, b, r in [(0, 1, .9), (0, 2, .9), (1, 2, .9), (3, 4, .8), (2, 3, .1), (3, 0, .1),
                    (3, 1, .1), (4, 5, .3)]:
        corr[a, b] = corr[b, a] = r
    member = np.zeros((6, 3), dtype=bool)
    member[[0, 1, 2, 3], 0] = member[[3, 4], 1] = member[[2, 5], 2] = True
    # gene 3: r .1 with set 0, r .8 with set 1; set 2 keeps only gene 5 and dissolves
    assert genesets.best_sets(corr, member, 2).tolist() == [0, 0, 0, 1, 1, -1]
    assert genesets.best_sets(corr, member, 3).tolist() == [0, 0, 0, 0, -1, -1]  # set 1 too small
    member[:, 1] = False
    member[[2, 3, 4], 1] = True  # 3 matched genes, but gene 2 joins set 0: set 1 dissolves
    assert genesets.best_sets(corr, member, 3).tolist() == [0, 0, 0, 0, -1, -1]
    nearest = genesets.nearest_groups(corr, np.array([0, 0, 0, 1, 1, -1]))
    assert nearest.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.fixture()
def functional_data(tmp_path):
    """Planted data plus two genes in no set (one follows the MT factor), and two GMT files:
    overlapping sets, a duplicate set, a set too small, names in other cases, unknown genes."""
    y, names, truth = make_planted()
    noise = np.random.default_rng(5).standard_normal((len(y), 2)).astype(np.float32)
    y = np.hstack([y, y[:, :1] + 0.3 * noise[:, :1], noise[:, 1:] + 3])
    names = [*names, "AL645608.7", "AC000001.1"]
    mt, rpl, znf = names[:12], names[12:22], names[22:30]
    write_gmt(tmp_path / "hallmark.gmt", {
        "HALLMARK_MITO": [g.lower() for g in mt] + ["NOTAGENE1"],
        "ribosome (GO:0005840)": rpl + mt[:2],  # overlaps the MT set by two genes
        "ZINC": znf + znf[:3],  # duplicated genes
        "TINY": [rpl[0], znf[0]]})  # below the minimum size
    write_gmt(tmp_path / "other.gmt", {"ZINC_COPY": znf, "UNMATCHED_SET": ["NOPE1", "NOPE2"]})
    return {"y": y, "genes": names, "corr": correlate_genes(y),
            "sources": [str(tmp_path / "hallmark.gmt"), str(tmp_path / "other.gmt")]}


@pytest.mark.parametrize("unmatched", ["other", "nearest"])
def test_functional_groups_put_every_gene_in_one_set(functional_data, unmatched):
    d = functional_data
    g = genes.make_groups("functional", d["genes"], d["corr"], sources=d["sources"],
                          min_size=3, unmatched=unmatched)
    expected = ["HALLMARK_MITO"] * 12 + ["ribosome_GO_0005840"] * 10 + ["ZINC"] * 8
    names = np.array(expected)
    groups = np.unique(names)
    noise = groups[np.argmax([d["corr"][31, :30][names == n].mean() for n in groups])]
    tail = ["HALLMARK_MITO", noise] if unmatched == "nearest" else ["other", "other"]
    assert g.labels.tolist() == expected + tail
    info = g.info
    assert info["libraries"]["hallmark"] == {"path": d["sources"][0], "sets": 4,
                                             "sets_matched": 4, "genes_listed": 31,
                                             "genes_matched": 30}
    assert info["libraries"]["other"] == {"path": d["sources"][1], "sets": 2, "sets_matched": 1,
                                          "genes_listed": 10, "genes_matched": 8}
    assert (info["genes_matched"], info["genes_in_several_sets"]) == (30, 8 + 2 + 1)
    assert (info["sets_matched"], info["sets_kept"], info["genes_in_no_kept_set"]) == (5, 3, 2)
    assert info["group_sets"]["ribosome_GO_0005840"] == "hallmark: ribosome (GO:0005840)"
    json.dumps(info)  # groupings.json


def test_functional_group_names_are_file_safe_and_unique():
    sets = pd.DataFrame({"library": ["GO BP", "KEGG", "KEGG", "x"],
                         "set": ["cell cycle/mitosis", "cell cycle/mitosis", "Other", "??"]})
    assert genesets.group_names(sets) == ["GO_BP.cell_cycle_mitosis", "KEGG.cell_cycle_mitosis",
                                       "KEGG.Other", "set"]


def test_functional_needs_sets_that_match_the_data(tmp_path, planted):
    path = write_gmt(tmp_path / "mouse.gmt", {"Mito": ["mt-Co1x"], "Rib": ["Rpl99"]})
    with pytest.raises(ValueError, match=r"none of the genes of \['mouse'\] is a gene"):
        genes.make_groups("functional", planted["genes"], planted["corr"], sources=[str(path)])
    with pytest.raises(ValueError, match="needs gene sets"):
        genes.make_groups("functional", planted["genes"], planted["corr"], sources=[])


def test_fetching_a_library_offline_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(genesets.OfflineError, match=r"'GO_Biological_Process_2023' is not cached "
                       r"at .*enrichr-human.*HF_HUB_OFFLINE is set\. Run 02 once with network"):
        genesets.fetch_library("GO_Biological_Process_2023", tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on: connection refused at once
    monkeypatch.setattr(genesets, "ENRICHR_HOST", closed.getsockname())
    start = time.perf_counter()
    with pytest.raises(genesets.OfflineError, match=r"no connection to 127\.0\.0\.1"):
        genesets.fetch_library("MSigDB_Hallmark_2020", tmp_path, timeout=2.0)
    assert time.perf_counter() - start < 2.5
    closed.close()
    assert not (tmp_path / "enrichr-human").exists()


def test_fetch_library_writes_what_the_client_returns_as_a_cached_gmt(tmp_path, monkeypatch):
    import gseapy.parser

    calls = []

    def download(name, organism):
        calls.append((name, organism))
        return {"HALLMARK_HYPOXIA": ["VEGFA", "CA9"], "EMPTY": [], "E2F": ["MKI67"]}

    monkeypatch.setattr(genesets, "offline_reason", lambda host, timeout: None)
    monkeypatch.setattr(gseapy.parser, "download_library", download)
    path = genesets.fetch_library("MSigDB_Hallmark_2020", tmp_path)
    assert genesets.read_gmt(path) == {"HALLMARK_HYPOXIA": ["VEGFA", "CA9"], "E2F": ["MKI67"]}
    assert genesets.fetch_library("MSigDB_Hallmark_2020", tmp_path) == path
    assert calls == [("MSigDB_Hallmark_2020", "Human")]  # the second call read the cache


def test_fetch_library_downloads_and_caches_when_online(tmp_path):
    reason = genesets.offline_reason()
    if reason:
        pytest.skip(f"Enrichr unreachable, the online path is not tried: {reason}")
    path = genesets.fetch_library("MSigDB_Hallmark_2020", tmp_path)
    sets = genesets.read_gmt(path)
    assert path == tmp_path / "enrichr-human" / "MSigDB_Hallmark_2020.gmt"
    assert len(sets) == 50 and "ERBB2" not in sets and any("MKI67" in m for m in sets.values())
    assert genesets.fetch_library("MSigDB_Hallmark_2020", tmp_path) == path  # cached


# --- coherence --------------------------------------------------------------------------------

def test_coherence_matches_a_direct_pair_count():
    rng = np.random.default_rng(4)
    corr = correlate_genes(rng.standard_normal((40, 9)))
    labels = np.array(["a", "a", "a", "b", "b", "other", "other", "other", "c"])
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(9, dtype=bool)
    named = (labels != "other")[:, None] & (labels != "other")[None, :]
    row = genes.coherence_table(corr, {"s": genes.Grouping("s", labels)}).loc["s"]
    assert row["within_r"] == pytest.approx(corr[same & off].mean(), abs=1e-6)
    assert row["between_r"] == pytest.approx(corr[~same].mean(), abs=1e-6)
    assert row["within_named_r"] == pytest.approx(corr[same & off & named].mean(), abs=1e-6)
    assert (row["groups"], row["largest"], row["other"]) == (4, 3, 3)
    per_group = genes.group_coherence(corr, labels).set_index("group")
    members = labels == "b"
    assert per_group.loc["b", "within_r"] == pytest.approx(corr[3, 4], abs=1e-6)
    assert per_group.loc["b", "between_r"] == pytest.approx(corr[members][:, ~members].mean(),
                                                            abs=1e-6)
    assert np.isnan(per_group.loc["c", "within_r"])


def test_planted_groupings_are_more_coherent_than_names_alone(planted):
    groupings = {"correlation": genes.make_groups("correlation", planted["genes"],
                                                  planted["corr"], n_modules=3, min_size=2),
                 "file": genes.Grouping("file", np.array(["x"] * 30))}
    table = genes.coherence_table(planted["corr"], groupings)
    assert table.loc["correlation", "contrast"] > 0.3
    assert np.isnan(table.loc["file", "between_r"])


# --- config -----------------------------------------------------------------------------------

def test_config_checks_strategies_and_shrinks_for_smoke():
    cfg = GeneClusteringConfig(strategies=["prefix"], k_range=[4, 30], smoke=True)
    assert cfg.strategies == ("prefix",) and cfg.k_range == (4, 7) and cfg.umap_epochs == 50
    assert cfg.prefixes == GENE_PREFIXES
    assert "file" in GeneClusteringConfig(groups_file="sets.csv").strategies
    with pytest.raises(ValueError, match=r"unknown \['umap'\]"):
        GeneClusteringConfig(strategies=["umap"])
    with pytest.raises(ValueError, match="needs GROUPS_FILE"):
        GeneClusteringConfig(strategies=["file"])
    assert replace(cfg, k=6).options("kmeans") == {"k": 6, "k_range": (4, 7), "seed": 0}
    functional = GeneClusteringConfig(gene_sets="genesets/breast_tissue_kit.gmt")
    assert functional.strategies[-1] == "functional"
    assert functional.options("functional") == {
        "sources": ("genesets/breast_tissue_kit.gmt",), "min_size": 10, "unmatched": "other",
        "cache_dir": None}
    with pytest.raises(ValueError, match="'functional' needs GENE_SETS"):
        GeneClusteringConfig(strategies=["functional"])
    with pytest.raises(ValueError, match=r"UNMATCHED='closest': choose from \['other'"):
        GeneClusteringConfig(gene_sets=["a.gmt"], unmatched="closest")


# --- the notebook (smoke tier) ----------------------------------------------------------------

@pytest.mark.smoke
def test_gene_clustering_notebook_wrote_groups_for_every_gene(demo_pipeline):
    from utils.data import load_data

    run = demo_pipeline["runs"] / "genes"
    data = load_data(demo_pipeline["data"])
    table = pd.read_csv(run / "gene_groups.csv", dtype=str)
    assert tuple(table.columns) == genes.GROUP_COLUMNS
    for strategy in ("kmeans", "prefix", "correlation"):
        rows = table[table["strategy"] == strategy]
        assert sorted(rows["gene"]) == sorted(data.genes) and rows["gene"].is_unique, strategy
    coherence = pd.read_csv(run / "group_coherence.csv", index_col="strategy")
    assert set(coherence.index) == {"kmeans", "prefix", "correlation"}
    assert coherence.loc["correlation", "contrast"] > 0  # co-expression modules are coherent
    info = json.loads((run / "groupings.json").read_text())
    assert 4 <= info["kmeans"]["k"] <= 7 and len(info["kmeans"]["silhouette"]) == 4
    for figure in ("umap_groups", "silhouette", "group_coherence"):
        assert (run / f"{figure}.png").stat().st_size > 10_000, figure
    assert json.loads((run / "config.json").read_text())["umap_epochs"] == 50  # QUICK
    settings = json.loads((run / "gene_groups.json").read_text())  # what 05 and 07 refit with
    assert set(settings) == {"kmeans", "prefix", "correlation"}
    assert settings["kmeans"]["embedding"]["n_epochs"] == 50
