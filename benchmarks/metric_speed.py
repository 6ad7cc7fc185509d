"""Time the four-part metric at DACON test size (2277 spots × 3467 genes).

    .venv/bin/python -m benchmarks.metric_speed
"""

import time

import numpy as np

from utils.metric import max_gene_floor, score


def main(n_spots: int = 2277, n_genes: int = 3467, repeats: int = 10) -> None:
    rng = np.random.default_rng(0)
    y = rng.gamma(0.5, 1.0, (n_spots, n_genes))
    for dtype in (np.float64, np.float32):
        pred = (y + rng.normal(size=y.shape)).astype(dtype)
        truth = y.astype(dtype)
        score(truth, pred)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            score(truth, pred)
            times.append(time.perf_counter() - start)
        print(f"score {n_spots}x{n_genes} {np.dtype(dtype).name}: median "
              f"{np.median(times) * 1e3:.0f} ms, best {min(times) * 1e3:.0f} ms")
    start = time.perf_counter()
    max_gene_floor(y, pred)
    print(f"max_gene_floor (5 shuffles): {(time.perf_counter() - start) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
