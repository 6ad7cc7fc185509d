"""What knowing the data costs at DACON scale: the data fingerprint (first call: every image
file is read and hashed; later calls: a stat of every file, the CSV parts hashed again) and the
duplicate audit (hashes of every patch, then all pairs), next to decoding the image cache.

    .venv/bin/python -m benchmarks.fingerprint_cost [--n-train 6992] [--n-test 2277] [--keep DIR]

Times are one run each on whatever else the machine is doing; the ratios within a run are the
numbers to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent
if str(KIT) not in sys.path:
    sys.path.insert(0, str(KIT))

from utils import data as kit_data  # noqa: E402
from utils.dev.demo import write_demo  # noqa: E402
from utils.duplicates import cached_hashes, find_duplicates  # noqa: E402


def timed(call) -> tuple[object, float]:
    """`call()` and the seconds it took."""
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def measure(root: Path) -> dict[str, float]:
    """Seconds of each step on the data folder `root` (caches under $KIT_CACHE_DIR)."""
    data, load_s = timed(lambda: kit_data.load_data(root))
    _, first = timed(lambda: data.fingerprint)
    again = kit_data.load_data(root)
    _, memo = timed(lambda: again.fingerprint)
    parts = kit_data.load_data(root)
    _, stat = timed(lambda: kit_data._files_digest(parts.image_paths("train") +
                                                   parts.image_paths("test")))
    _, cache = timed(lambda: [kit_data.load_images(data, s) for s in ("train", "test")])
    _, hashes = timed(lambda: [cached_hashes(data, s) for s in ("train", "test")])
    audit, pairs = timed(lambda: find_duplicates(data))
    return {"load_data (CSVs, checks)": load_s,
            "fingerprint, first call (reads every image)": first,
            "fingerprint, later calls (memo)": memo, "  of which: stat of every image": stat,
            "image cache build (decode every PNG)": cache,
            "duplicate hashes, first call": hashes, "duplicate audit (cached hashes)": pairs,
            "_pairs found": len(audit.pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=6992)
    parser.add_argument("--n-test", type=int, default=2277)
    parser.add_argument("--n-genes", type=int, default=3467)
    parser.add_argument("--keep", help="folder for the demo set and caches (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        start = time.perf_counter()
        root = write_demo(work / "demo", n_train=args.n_train, n_test=args.n_test,
                          n_genes=args.n_genes, seed=0)
        print(f"demo set: {args.n_train} + {args.n_test} patches, {args.n_genes} genes "
              f"({time.perf_counter() - start:.0f} s to write or find)")
        os.environ["KIT_CACHE_DIR"] = str(work / f"cache-{time.time_ns()}")  # cold caches
        size = sum(p.stat().st_size for p in (root / "train").iterdir())
        size += sum(p.stat().st_size for p in (root / "test").iterdir())
        print(f"image files: {size / 1e9:.2f} GB")
        times = measure(root)
    cache = times["image cache build (decode every PNG)"]
    for name, seconds in times.items():
        if name.startswith("_"):
            print(f"{name[1:]}: {seconds}")
        else:
            print(f"{name:46s} {seconds:7.2f} s  ({seconds / cache:.2f} x the cache build)")


if __name__ == "__main__":
    main()
