"""Frozen-feature ridge on ../shared/her2st: block CV vs random CV, every metric part, wall
time, peak RSS, and the test-set CSV. Features are computed from scratch in a fresh cache for
the first run; the second run reuses them.

    .venv/bin/python -m benchmarks.her2st_ridge [--backbone tf_efficientnet_lite0]
"""

import argparse
import os
import tempfile
import time

from utils.cv import format_cv
from utils.dev.pipeline import execute_notebook
from utils.places import kit_root
from utils.runs import load_run

SHARED = kit_root().parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default=str(SHARED / "weights" /
                                                 "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--out", default="runs/her2st/bench")
    args = parser.parse_args()
    data = SHARED / "her2st"
    if not data.is_dir():
        raise SystemExit(f"{data} is absent: this benchmark needs ../shared/her2st")
    notebooks = kit_root() / "notebooks"
    with tempfile.TemporaryDirectory() as cache:
        os.environ["KIT_CACHE_DIR"] = cache
        for cv in ("blocks", "random"):
            run_dir = f"{args.out}/ridge_{cv}"
            start = time.perf_counter()
            execute_notebook(notebooks / "05_train.ipynb",
                             {"DATA_DIR": str(data), "RUN_DIR": run_dir, "CV": cv,
                              "BACKBONE": args.backbone, "PRETRAINED": args.weights,
                              "IMG_SIZE": 224, "OVERWRITE": True},
                             kit_root() / args.out / f"05_train_{cv}.ipynb")
            run = load_run(run_dir)
            print(format_cv(run.cv))
            details = run.config["details"]
            print(f"wall {time.perf_counter() - start:.0f} s (recipe {run.config['elapsed_s']} s),"
                  f" peak RSS {run.config['peak_rss_gb']} GB, alpha {details['alpha']}"
                  f" (per fold {details['fold_alphas']})\n")
    submission = f"{args.out}/submission_ridge_blocks.csv"
    execute_notebook(notebooks / "07_ensemble_submit.ipynb",
                     {"DATA_DIR": str(data), "RUNS": [f"{args.out}/ridge_blocks"],
                      "SUBMISSION": submission}, kit_root() / args.out / "07.ipynb")
    print(f"test-set CSV: {kit_root() / submission}")


if __name__ == "__main__":
    main()
