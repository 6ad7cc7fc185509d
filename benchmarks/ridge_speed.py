"""The ridge fit's SVDs at DACON scale (issue 26): LAPACK's thin SVD against the kit's Gram route
(`utils.train.gram_svd`), on the shapes `cv_ridge` meets with `cpu_best` on DACON's 3 slices.

    .venv/bin/python -m benchmarks.ridge_speed [--width 3584] [--genes 3467] [--k 16] [--tiny]

For each number of rows (a full fit on 6992, an outer fold's 2/3, an inner fold's 1/3): seconds
of the features' SVD both ways, of the targets' top-`k` axes (TARGET_PCA) both ways, and the
largest difference between the two routes' ridge predictions (alpha 1 and 1000) relative to the
predictions' spread. Random features of rank about half the width (a backbone's stage maps are
collinear) and random targets; `--tiny` runs the same code on small shapes (the test's path).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from utils.train import gram_svd

DACON_ROWS = (6992, 4661, 2331)


def features(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Standardised random features of rank ~width/2 plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width // 2)) @ rng.standard_normal((width // 2, width))
    x += 0.01 * rng.standard_normal((rows, width))
    return (x - x.mean(0)) / x.std(0)


def timed(fn, *args):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure(rows: int, width: int, genes: int, k: int) -> dict:
    """Both routes on one shape: seconds and the largest relative prediction difference."""
    x = features(rows, width)
    y = np.random.default_rng(1).standard_normal((rows, genes))
    lapack_s, (u, s, vt) = timed(np.linalg.svd, x, False)
    gram_s, (gu, gs, gvt) = timed(gram_svd, x)
    top_lapack_s, _ = timed(lambda a: np.linalg.svd(a, full_matrices=False)[2][:k], y)
    top_gram_s, _ = timed(gram_svd, y, k)
    query, diff = x[:256], 0.0
    for alpha in (1.0, 1000.0):
        a = (query @ vt.T * (s / (s ** 2 + alpha))) @ (u.T @ y)
        b = (query @ gvt.T * (gs / (gs ** 2 + alpha))) @ (gu.T @ y)
        diff = max(diff, float(np.abs(a - b).max() / a.std()))
    return {"rows": rows, "svd LAPACK s": lapack_s, "svd Gram s": gram_s,
            "speed-up": lapack_s / gram_s, f"top-{k} LAPACK s": top_lapack_s,
            f"top-{k} Gram s": top_gram_s, f"top-{k} speed-up": top_lapack_s / top_gram_s,
            "max rel. diff": diff}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3584, help="cpu_best's feature width")
    parser.add_argument("--genes", type=int, default=3467)
    parser.add_argument("--k", type=int, default=16, help="TARGET_PCA")
    parser.add_argument("--tiny", action="store_true", help="small shapes (the test's path)")
    args = parser.parse_args(argv)
    shapes = (120, 80, 40) if args.tiny else DACON_ROWS
    width, genes = (64, 50) if args.tiny else (args.width, args.genes)
    print(f"load average {os.getloadavg()}, width {width}, genes {genes}", flush=True)
    rows = []
    for n in shapes:
        rows.append(measure(n, width, genes, args.k))
        print(" | ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in rows[-1].items()), flush=True)
    print(f"load average at the end {os.getloadavg()}")
    return rows


if __name__ == "__main__":
    main()
