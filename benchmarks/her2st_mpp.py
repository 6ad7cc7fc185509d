"""Frozen-feature ridge on ../shared/her2st with and without magnification matching: the same
lite0 weights at 224 px, slice CV, once per (MODEL_MPP, MPP_FIT) given on the command line.

    KIT_CACHE_DIR=runs/her2st/cache_mpp .venv/bin/python -m benchmarks.her2st_mpp \
        none 0.5:pad 0.5:resize 1.0:resize
"""

import sys
import time

from utils.config import TrainConfig
from utils.data import load_data
from utils.metric import KEYS
from utils.places import kit_root
from utils.train import make_cv_folds, train

SHARED = kit_root().parent / "shared"
HER2ST_MPP = 0.63  # µm/px of the her2st crops (its README)


def settings(arg: str) -> dict:
    """'none' → no rescaling; '<model_mpp>:<fit>' → rescale from her2st's MPP."""
    if arg == "none":
        return {"mpp": HER2ST_MPP, "model_mpp": None}
    model_mpp, _, fit = arg.partition(":")
    return {"mpp": HER2ST_MPP, "model_mpp": float(model_mpp), "mpp_fit": fit or "pad"}


def main() -> None:
    data = load_data(SHARED / "her2st")
    for arg in sys.argv[1:] or ["none"]:
        cfg = TrainConfig(data_dir=str(SHARED / "her2st"), run_dir=f"runs/her2st/mpp_{arg}",
                          recipe="ridge", pretrained=str(SHARED / "weights" /
                                                         "tf_efficientnet_lite0.in1k.safetensors"),
                          img_size=224, cv="slices", tta=False, overwrite=True,
                          **settings(arg))
        folds, splitter = make_cv_folds(cfg, data)
        start = time.perf_counter()
        cv = train(cfg, data, folds, splitter).cv
        folds_score = [f["score"] for f in cv["folds"]]
        parts = " ".join(f"{k} {cv['overall'][k]:.3f}" for k in KEYS)
        oof = " ".join(f"{k} {cv['oof'][k]:.3f}" for k in KEYS)
        print(f"{arg}: mean {cv['overall']['score']:.4f} (folds {min(folds_score):.3f}–"
              f"{max(folds_score):.3f}; {parts}) | OOF {cv['oof']['score']:.4f} ({oof}) | "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
