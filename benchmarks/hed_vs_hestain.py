"""The kit's HED stain jitter (`HEDJitter`) against albumentations' `HEStain`, on 03's screening
scores: the same 64 train patches of ../shared/her2st (or --data), the weight-free scores
(`stain_shift`, `ssim`) and seconds, each transform always applied (p=1), one seed.

Rows: each HEDJitter level of 03 (`utils.choices.PHOTOMETRIC`), HEStain at zero strength (does
the method alone repaint the patch?) and HEStain at strengths matched to HEDJitter's (intensity
scale 1 ± alpha, shift ± a multiple of beta), for its per-image stain methods and its presets.

    .venv/bin/python -m benchmarks.hed_vs_hestain [--data ../shared/her2st] [--patches 64]
"""

from __future__ import annotations

import argparse

import pandas as pd

from utils import augment
from utils.choices import LEVELS, PHOTOMETRIC
from utils.config import ScreenConfig
from utils.data import load_data
from utils.places import kit_root

HER2ST = kit_root().parent / "shared" / "her2st"


def hestain(method: str, scale: float, shift: float) -> list[dict]:
    """A one-transform policy: HEStain with intensity scale 1 ± scale and shift ± shift."""
    return [{"name": "HEStain", "params": {
        "method": method, "intensity_scale_range": [1 - scale, 1 + scale],
        "intensity_shift_range": [-shift, shift], "augment_background": True, "p": 1.0}}]


def variants() -> dict[str, str | list[dict]]:
    """Row name → candidate key (the kit's) or policy (HEStain)."""
    rows: dict[str, str | list[dict]] = {f"HEDJitter:{lv}": f"HEDJitter:{lv}" for lv in LEVELS}
    for method in ("macenko", "vahadane", "random_preset"):
        rows[f"HEStain {method} zero"] = hestain(method, 0.0, 0.0)
        for level, params in zip(LEVELS, PHOTOMETRIC["HEDJitter"]):
            for factor in (1, 10):  # HEStain's shift is in its own concentration units
                rows[f"HEStain {method} {level} shift×{factor}"] = hestain(
                    method, params["alpha_limit"], factor * params["beta_limit"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HER2ST))
    parser.add_argument("--patches", type=int, default=64)
    args = parser.parse_args()
    cfg = ScreenConfig(data_dir=args.data, n_patches=args.patches, dino_model=None,
                       lpips_net=None)
    images = augment.sample_patches(load_data(cfg.data_dir), cfg.n_screen, cfg.seed)
    scorers = augment.make_scorers(images, cfg)
    rows = []
    for name, what in variants().items():
        scores = augment.score_augmented(what, images, scorers, cfg.seed)
        rows.append({"variant": name, **scores,
                     "ms_per_patch": round(1000 * scores["seconds"] / len(images), 1)})
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False, header=len(rows) == 1),
              flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{len(images)} patches of {images.shape[1]} px from {cfg.data_dir}; limits of 03: "
          f"stain_shift <= {cfg.max_stain_shift}, ssim >= {cfg.min_ssim}")
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
