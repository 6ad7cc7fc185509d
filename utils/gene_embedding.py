"""Genes as points: gene–gene correlation, PCA, a UMAP embedding, and KMeans with K chosen by
silhouette. Used by the `kmeans` and `correlation` gene-grouping strategies and the figures.

Speed at DACON scale (3467 genes × 6992 spots): the correlation matrix is one matrix product;
PCA comes from it by subspace iteration; UMAP gets exact neighbours from it (or runs its
approximate nearest-neighbour descent), never its slow all-pairs path for < 4096 points.
"""

from __future__ import annotations

import warnings

import numpy as np


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


# --- k-means with K by silhouette -------------------------------------------------------------

def fit_kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """KMeans labels (0..k-1) of the rows of x."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # One thread: OpenMP on a few thousand 2-D points is ~50x slower on a busy, shared CPU.
    with threadpool_limits(1):
        return KMeans(k, n_init=4, random_state=seed).fit_predict(x)


def sample_distances(x: np.ndarray, max_points: int = 2000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a random sample of at most max_points rows and their Euclidean distances."""
    rows = np.arange(len(x))
    if len(x) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    sub = np.asarray(x[rows], dtype=np.float64)
    sq = (sub * sub).sum(1)
    return rows, np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * sub @ sub.T, 0, None))


def silhouette_from_distances(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a labelling given the points' distance matrix."""
    labels = np.unique(labels, return_inverse=True)[1]
    n = np.bincount(labels).astype(np.float64)
    if len(n) < 2:
        return 0.0
    rows, size = np.arange(len(labels)), n[labels]
    mean_to = dist @ np.eye(len(n))[labels] / n  # mean distance of each point to each cluster
    own = mean_to[rows, labels] * size / np.maximum(size - 1, 1)  # excluding itself
    mean_to[rows, labels] = np.inf
    nearest = mean_to.min(axis=1)
    s = (nearest - own) / np.maximum(np.maximum(own, nearest), 1e-12)
    return float(np.where(size > 1, s, 0.0).mean())


def silhouette(x: np.ndarray, labels: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Mean silhouette (Euclidean) of a labelling, on at most max_points random rows."""
    rows, dist = sample_distances(x, max_points, seed)
    return silhouette_from_distances(dist, np.asarray(labels)[rows])


def choose_k(embedding: np.ndarray, k_range: tuple[int, int], seed: int = 0) -> dict[int, float]:
    """Silhouette of KMeans on the embedding for every K in k_range (inclusive), on one sample
    of at most 2000 genes (distances computed once)."""
    low, high = int(k_range[0]), min(int(k_range[1]), len(embedding) - 1)
    if low < 2 or low > high:
        raise ValueError(f"K range must satisfy 2 <= min <= max < number of genes; got {k_range}")
    rows, dist = sample_distances(embedding, seed=seed)
    return {k: silhouette_from_distances(dist, fit_kmeans(embedding, k, seed)[rows])
            for k in range(low, high + 1)}


def warm_up_umap(neighbors: str = "exact") -> float:
    """Compile UMAP's numba code (and NN-descent's for "approx") on a tiny problem, once per
    kernel; returns the seconds taken, so the real embedding can be timed without them."""
    import time

    start = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((40, 60)).astype(np.float32)
    embed_genes(correlate_genes(x), n_pca=5, n_neighbors=5, n_epochs=5, neighbors=neighbors)
    return time.perf_counter() - start
