"""Image cache at DACON scale (6992 train + 2277 test patches, 3467 genes): time and peak RSS
of loading the CSVs, building the cache, and reloading it with a full pass over every pixel.
Each step runs in a fresh process so its peak RSS is its own.

    .venv/bin/python -m benchmarks.image_cache [--data /tmp/dacon_scale]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time

STEP = """
import json, resource, time, numpy as np
from utils.data import load_data, load_images
start = time.perf_counter()
data = load_data({data!r})
if {step!r} != "csv":
    for split in ("train", "test"):
        images = load_images(data, split, cache_dir={cache!r})
        if {step!r} == "reload":
            total = sum(int(images[i:i + 512].sum(dtype=np.uint64))
                        for i in range(0, len(images), 512))
print(json.dumps({{"s": time.perf_counter() - start,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}}))
"""


def run_step(step: str, data: str, cache: str) -> dict:
    """One measured step in a fresh interpreter."""
    code = STEP.format(step=step, data=data, cache=cache)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/dacon_scale")
    args = parser.parse_args()
    from utils.dev.demo import write_demo

    start = time.perf_counter()
    write_demo(args.data, n_train=6992, n_test=2277, n_genes=3467)
    print(f"demo set at DACON scale ready in {time.perf_counter() - start:.0f} s: {args.data}")
    with tempfile.TemporaryDirectory() as cache:
        for step, what in (("csv", "load + validate CSVs"),
                           ("build", "CSVs + decode 9269 PNGs into the cache"),
                           ("reload", "CSVs + memory-map cache + read every pixel")):
            result = run_step(step, args.data, cache)
            print(f"{what:<45} {result['s']:6.1f} s   peak RSS {result['rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
