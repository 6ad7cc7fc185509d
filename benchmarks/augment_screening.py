"""How long does screening take per augmentation candidate, and what does it measure on real
H&E? Times augmenting N patches and each score (stain_shift, ssim, DINO, LPIPS) per candidate,
and prints the screening table with its verdicts.

    .venv/bin/python -m benchmarks.augment_screening [--data ../shared/her2st] [--patches 64]
        [--dino vit_small_patch16_224.dino] [--lpips alex] [--random-weights]

Without network the DINO and LPIPS weights cannot be downloaded; `--random-weights` then times
the same networks with random weights (same compute; their scores are meaningless and never
select). Nothing here is timed in tests.
"""

import argparse
import time

import pandas as pd

from utils import augment as screening
from utils.augment import is_geometric
from utils.config import ScreenConfig
from utils.data import load_data
from utils.places import kit_root

SHARED_HER2ST = kit_root().parent / "shared" / "her2st"


def time_candidates(images, keys: list[str], scorers: screening.Scorers,
                    seed: int) -> pd.DataFrame:
    """Seconds per candidate: augmenting the patches, then each score separately."""
    rows = []
    for key in keys:
        start = time.perf_counter()
        augmented = screening.augment_images(key, images, seed)
        row = {"candidate": key, "geometric": is_geometric(key),
               "augment_s": time.perf_counter() - start}
        for name, fn in scorers.fns.items():
            start = time.perf_counter()
            row[name] = float(fn(augmented).mean())
            row[f"{name}_s"] = time.perf_counter() - start
        rows.append(row)
    table = pd.DataFrame(rows)
    table["total_s"] = table[[c for c in table.columns if c.endswith("_s")]].sum(axis=1)
    return table


def main() -> None:
    """Command line: time the screening of every candidate on a sample of patches."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_HER2ST), help="DACON-layout data folder")
    parser.add_argument("--patches", type=int, default=64, help="patches to screen on")
    parser.add_argument("--dino", default="vit_small_patch16_224.dino", help="timm model or ''")
    parser.add_argument("--lpips", default="alex", help="LPIPS trunk or ''")
    parser.add_argument("--random-weights", action="store_true", help="random DINO/LPIPS nets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.data == str(SHARED_HER2ST) and not SHARED_HER2ST.is_dir():
        raise SystemExit(f"{SHARED_HER2ST} is absent: pass --data <a DACON folder>")
    cfg = ScreenConfig(data_dir=args.data, n_patches=args.patches, seed=args.seed,
                       dino_model=args.dino or None, dino_pretrained=not args.random_weights,
                       lpips_net=args.lpips or None, lpips_pretrained=not args.random_weights)
    images = screening.sample_patches(load_data(cfg.data_dir), cfg.n_screen, cfg.seed)
    start = time.perf_counter()
    scorers = screening.make_scorers(images, cfg)
    print(f"{len(images)} patches {images.shape[1:]} from {cfg.data_dir}; loading networks and "
          f"scoring the originals: {time.perf_counter() - start:.1f} s")
    for name, note in scorers.notes.items():
        print(f"  {name:12s} {note}")
    table = time_candidates(images, list(cfg.candidates), scorers, cfg.seed)
    verdict = screening.select_candidates(table, cfg.limits, scorers.selecting)
    table["kept"] = verdict["kept"]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    seconds = table["total_s"]
    print(f"seconds per candidate on {len(images)} patches: mean {seconds.mean():.2f}, "
          f"min {seconds.min():.2f}, max {seconds.max():.2f}; all {len(table)} candidates "
          f"{seconds.sum():.0f} s")
    print("mean seconds per candidate by step: " + ", ".join(
        f"{c[:-2]} {table[c].mean():.2f}" for c in table.columns if c.endswith("_s")
        and c != "total_s"))
    print("kept:", ", ".join(table.loc[table["kept"], "candidate"]))


if __name__ == "__main__":
    main()
