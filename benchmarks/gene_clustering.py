"""Time gene clustering at DACON scale: 3467 genes × 6992 spots of demo-generator expression.

    .venv/bin/python -m benchmarks.gene_clustering                 # demo expression, DACON size
    .venv/bin/python -m benchmarks.gene_clustering --data ../shared/her2st   # a real data folder
    .venv/bin/python -m benchmarks.gene_clustering --all-pairs     # + UMAP's slow default path

Prints numba's first-compile time apart, then for both neighbour methods of
`utils.genes.embed_genes` ("exact": kNN by correlation, passed to UMAP as
precomputed_knn; "approx": UMAP's NN-descent on the PCA scores) the seconds of each step and
the coherence of the resulting groups. Only the expression is generated (no images).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from utils import genes
from utils.genes import correlate_genes, embed_genes, warm_up_umap


def make_expression(n_spots: int, n_genes: int, n_slices: int = 3,
                    seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Train expression (spots × genes, float32) from the demo generator's public parts, as
    `utils.dev.demo.write_demo` composes them (n_slices slices in row order), without images."""
    from utils.dev.demo import make_gene_names, make_slice_factors, simulate_expression

    names = make_gene_names(n_genes, seed)
    sizes = np.diff(np.linspace(0, n_spots, n_slices + 1).round().astype(int))
    factors = np.concatenate([make_slice_factors(int(n), np.random.default_rng([seed, 1, s]))
                              for s, n in enumerate(sizes)])
    slices = np.repeat(np.arange(n_slices), sizes)
    return simulate_expression(factors, slices, names, seed), names


def time_pipeline(y: np.ndarray, names: list[str], neighbors: str) -> dict:
    """Seconds of each step of 02_gene_clustering's defaults, and the groupings."""
    cfg = genes.GeneClusteringConfig(neighbors=neighbors)
    cpu, start = time.process_time(), time.perf_counter()
    corr = correlate_genes(y)
    t_corr = time.perf_counter()
    embedding = embed_genes(corr, **cfg.embed_options())
    t_embed = time.perf_counter()
    groupings = genes.make_groupings(cfg, names, corr, embedding)
    end = time.perf_counter()
    steps = {"corr matrix": t_corr - start, "pca+umap": t_embed - t_corr,
             **{name: g.info["seconds"] for name, g in groupings.items()}, "total": end - start,
             "process CPU": time.process_time() - cpu}
    return {"seconds": steps, "groupings": groupings, "corr": corr}


def time_all_pairs(corr: np.ndarray) -> float:
    """Seconds of UMAP's default path for < 4096 points (all pairwise distances), same PCA."""
    import umap

    from utils.genes import pca_genes

    scores = pca_genes(corr, 50)
    start = time.perf_counter()
    umap.UMAP(n_neighbors=15, n_epochs=200, min_dist=0.0, random_state=0,
              n_jobs=1).fit_transform(scores)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spots", type=int, default=6992)
    parser.add_argument("--genes", type=int, default=3467)
    parser.add_argument("--data", default=None, help="a DACON-layout folder instead of demo data")
    parser.add_argument("--all-pairs", action="store_true", help="also time UMAP's default path")
    args = parser.parse_args()
    if args.data:
        from utils.data import load_data

        data = load_data(args.data)
        y, names = data.y, data.genes
    else:
        y, names = make_expression(args.spots, args.genes)
    print(f"{y.shape[1]} genes × {y.shape[0]} spots; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f} (other processes slow every number below)")
    print(f"numba first compile (UMAP, exact path): {warm_up_umap():.1f} s")
    print(f"numba first compile (+ NN-descent, approx path): {warm_up_umap('approx'):.1f} s")
    results = {}
    for neighbors in ("exact", "approx"):
        results[neighbors] = result = time_pipeline(y, names, neighbors)
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())
        print(f"\n[{neighbors}] {steps}")
        print(f"[{neighbors}] kmeans K = {result['groupings']['kmeans'].info['k']}")
        print(genes.coherence_table(result["corr"], result["groupings"]).round(4).to_string())
    from sklearn.metrics import adjusted_rand_score

    ari = adjusted_rand_score(*(results[n]["groupings"]["kmeans"].labels for n in results))
    print(f"\nkmeans groups, exact vs approx neighbours: adjusted Rand index {ari:.3f}")
    if args.all_pairs:
        seconds = time_all_pairs(results["exact"]["corr"])
        print(f"UMAP's default all-pairs path (< 4096 points), UMAP alone: {seconds:.1f} s")


if __name__ == "__main__":
    main()
