"""Speed at competition scale (issue 26): each CPU preset's wall time on DACON-sized data (6992
train + 2277 test patches, 3467 genes), split into feature extraction, fitting and prediction,
and the kit's extraction images/s against the backbone's pure forward in the same process.

    .venv/bin/python -m benchmarks.preset_speed [--n-images 64] [--batch-size 16]
        [--presets cpu_best cpu_lite1 ...] [--fit-rows 6992] [--fit cpu_best ...]
        [--nchw] [--tiny]

Extraction is timed on a SAMPLE of demo patches (`utils.dev.demo.write_demo`, 224 px) with the
kit's own path (`utils.features.extract_features` with the preset's `TrainConfig.feature_spec`,
random weights of the same architecture: no download) and extrapolated linearly to 9269
patches. The pure forward is `model(x)` on resident float tensors, as many passes (views ×
crops per patch) at the same batch size, `torch.inference_mode`, no preprocessing, in
channels_last (the kit's format; `--nchw` also times NCHW, the faster counts), before and after
the extraction. Presets with the same feature spec share one extraction. Fitting runs for real
(`cv_ridge` / `cv_retrieval` on random float32 features of the preset's width, random targets,
3 block folds, `--fit-rows` rows, 2277 test rows); prediction is the test model's predict on
2277 rows, timed apart. `--tiny` runs the same code
on `test_efficientnet` at 64 px with a small ridge (the test's path). Timings on a shared
machine: read the ratios, taken within one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from utils.choices import TTA_VIEWS
from utils.config import TrainConfig
from utils.data import load_data, load_images
from utils.dev.demo import write_demo
from utils.features import extract_features
from utils.metric import make_folds
from utils.models import create_backbone
from utils.paths import kit_root
from utils.train import RidgePath, centre_by_fold, cv_retrieval, cv_ridge, nearest_predictions

PRESETS = ("cpu_best", "cpu_fast", "cpu_lite0", "cpu_lite1", "cpu_lite2", "cpu_retrieval",
           "cpu_ridge_genes")
DACON = {"train": 6992, "test": 2277, "genes": 3467}
TINY = {"train": 96, "test": 32, "genes": 40}
GOAL_RATIO, BEST_MINUTES = 1.1, 20.0


def preset_config(name: str, tiny: bool = False) -> TrainConfig:
    """05's config of a preset file with random weights (`--tiny`: test_efficientnet, 64 px)."""
    values = yaml.safe_load((kit_root() / "presets" / f"{name}.yaml").read_text())
    values = {key.lower(): value for key, value in values.items()} | {"pretrained": False}
    if tiny:
        values.update(backbone="test_efficientnet", img_size=64)
    return TrainConfig(**values)


def sample_images(folder: Path, n: int, size: int) -> np.ndarray:
    """`n` demo patches of `size` px, decoded by the kit's image cache."""
    write_demo(folder / "demo", n_train=n, n_test=1, n_genes=8, n_train_slices=1,
               image_size=size, workers=1)
    return np.asarray(load_images(load_data(folder / "demo"), "train", folder / "cache"))


def passes_per_image(cfg: TrainConfig) -> int:
    """Forward passes per patch: the TTA views (8, 4 with "flips", 1 without) times the crops."""
    spec = cfg.feature_spec
    return TTA_VIEWS[spec.tta] * len(spec.crops)


def time_forward(model: torch.nn.Module, n_images: int, passes: int, batch_size: int,
                 img_size: int, channels_last: bool) -> float:
    """Seconds of `passes` pure forward passes per patch of `n_images` patches, batched as the
    kit batches them, on resident random input (one warm-up pass not counted)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = torch.randn(batch_size, 3, img_size, img_size).contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for first in range(0, n_images, batch_size):
            batch = x[:min(batch_size, n_images - first)]
            for _ in range(passes):
                model(batch)
        return time.perf_counter() - start


def time_extraction(model: torch.nn.Module, images: np.ndarray, cfg: TrainConfig,
                    batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of the kit's `extract_features` on the sample (after a one-batch warm-up), and
    the features."""
    cpu = torch.device("cpu")
    extract_features(model, images[:batch_size], cfg.feature_spec, batch_size, cpu, False)
    start = time.perf_counter()
    features = extract_features(model, images, cfg.feature_spec, batch_size, cpu, False)
    return time.perf_counter() - start, features


def measure_extraction(cfg: TrainConfig, images: np.ndarray, batch_size: int,
                       nchw: bool = False) -> dict:
    """Kit extraction vs pure channels_last forward (the kit's format), timed before and after
    the extraction and averaged, so a load change between them cancels out in part; `nchw`
    also times the NCHW forward once (the faster format counts)."""
    model = create_backbone(cfg.backbone, False, cfg.img_size, cfg.seed)
    n, passes = len(images), passes_per_image(cfg)
    size = cfg.feature_spec.img_size or 224
    plain = time_forward(model, n, passes, batch_size, size, False) if nchw else float("inf")
    last = time_forward(model, n, passes, batch_size, size, channels_last=True)
    extraction, features = time_extraction(model, images, cfg, batch_size)
    channels_last = last < plain
    after = time_forward(model, n, passes, batch_size, size, channels_last=channels_last)
    return {"n": n, "passes": passes, "width": features.shape[1], "extract_s": extraction,
            "forward_s": (min(plain, last) + after) / 2, "nchw_s": plain,
            "channels_last_s": last, "faster": "channels_last" if channels_last else "NCHW"}


def time_fit(cfg: TrainConfig, width: int, rows: int, sizes: dict, seed: int = 0) -> dict:
    """Seconds of 05's fit (nested CV and the test model, with CENTRE_FEATURES as set) on random
    float32 features of `width` and random targets, 3 block folds; and of predicting the test
    rows alone."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width), dtype=np.float32)
    y = rng.standard_normal((rows, sizes["genes"]), dtype=np.float32)  # timing only
    x_test = rng.standard_normal((sizes["test"], width), dtype=np.float32)
    folds = make_folds("blocks", rows, 3)
    start = time.perf_counter()
    features = {"train": x, "test": x_test}
    if cfg.centre_features:
        features = centre_by_fold(features, folds)
    if cfg.recipe == "retrieval":
        cv_retrieval(features["train"], y, features["test"], folds, cfg.n_nearest,
                     cfg.temperatures, "blocks")
    else:
        cv_ridge(features["train"], y, features["test"], folds, cfg.alphas, cfg.pca_dim, "blocks",
                 cfg.target_pca)
    fit = time.perf_counter() - start
    return {"fit_s": fit, "predict_s": time_predict(cfg, x, y, x_test), "rows": rows}


def time_predict(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> float:
    """Seconds of the test prediction alone: a ridge path of the fitted shapes (random values),
    or retrieval's nearest spots with the largest k."""
    start = time.perf_counter()
    if cfg.recipe == "retrieval":
        nearest_predictions(x, y, x_test, (max(cfg.n_nearest),), (cfg.temperatures[0],))
        return time.perf_counter() - start
    k, d = min(x.shape), x.shape[1]
    rng = np.random.default_rng(1)
    path = RidgePath(np.zeros(d), np.ones(d), y.mean(0), rng.standard_normal((k, d)),
                     np.ones(k), rng.standard_normal((k, y.shape[1])))
    start = time.perf_counter()
    path.predict(x_test, cfg.alphas[0])
    return time.perf_counter() - start


def measure(names: list[str], n_images: int, batch_size: int, fit_rows: int | None,
            tiny: bool = False, nchw: bool = False,
            fitted: list[str] | None = None) -> list[dict]:
    """One row per preset: extraction (shared by presets of one feature spec), fit, predict
    (only for the presets in `fitted`, if given: a fit takes minutes at DACON scale)."""
    sizes = TINY if tiny else DACON
    configs = {name: preset_config(name, tiny) for name in names}
    extractions: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = sample_images(Path(tmp), n_images, 64 if tiny else 224)
        for name, cfg in configs.items():
            tag = cfg.feature_spec.tag
            if tag not in extractions:
                extractions[tag] = measure_extraction(cfg, images, batch_size, nchw)
                print(f"{tag}: {extractions[tag]}", flush=True)
            ext = extractions[tag]
            fit = None
            if fitted is None or name in fitted:
                fit = time_fit(cfg, ext["width"], fit_rows or sizes["train"], sizes)
                print(f"{name}: {fit}", flush=True)
            rows.append(summarise(name, cfg, ext, fit, sizes))
    return rows


def summarise(name: str, cfg: TrainConfig, ext: dict, fit: dict | None, sizes: dict) -> dict:
    """A table row: rates on the sample, extraction extrapolated to every patch, minutes (fit
    and predict NaN where not timed)."""
    total = sizes["train"] + sizes["test"]
    extract_min = ext["extract_s"] / ext["n"] * total / 60
    fit = fit or {"fit_s": np.nan, "predict_s": np.nan, "rows": "not timed"}
    fit_min, predict_min = fit["fit_s"] / 60, fit["predict_s"] / 60
    return {"preset": name, "backbone": f"{cfg.backbone}@{cfg.feature_spec.img_size}",
            "views x crops": f"{ext['passes'] // len(cfg.feature_spec.crops)}x"
                             f"{len(cfg.feature_spec.crops)}",
            "sample img/s": ext["n"] / ext["extract_s"],
            "forward img/s": ext["n"] / ext["forward_s"],
            "ratio": ext["extract_s"] / ext["forward_s"],
            f"extract min ({total}, extrap.)": extract_min,
            "fit rows": fit["rows"], "fit min": fit_min, "predict min": predict_min,
            "total min": extract_min + fit_min, "width": ext["width"]}


def format_table(rows: list[dict]) -> str:
    """A markdown table of the rows (floats to 2 decimals)."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def verdict(rows: list[dict]) -> str:
    """Whether cpu_best's extrapolated end-to-end time meets the issue's 20-minute target."""
    best = [r for r in rows if r["preset"] == "cpu_best"]
    if not best:
        return "cpu_best not measured"
    total = best[0]["total min"]
    return (f"cpu_best end to end (extraction extrapolated + fit): {total:.1f} min, target "
            f"<= {BEST_MINUTES:g} min: {'met' if total <= BEST_MINUTES else 'NOT met'}; "
            f"extraction/forward ratio {best[0]['ratio']:.2f} (goal <= {GOAL_RATIO})")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--n-images", type=int, default=64, help="sample patches to extract")
    parser.add_argument("--batch-size", type=int, default=16, help="the kit's CPU default: 16")
    parser.add_argument("--fit-rows", type=int, default=None, help="default: 6992 (DACON)")
    parser.add_argument("--fit", nargs="+", default=None,
                        help="presets whose fit is timed (default: every one)")
    parser.add_argument("--nchw", action="store_true", help="also time the NCHW forward")
    parser.add_argument("--tiny", action="store_true", help="test_efficientnet at 64 px, small fit")
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    rows = measure(args.presets, args.n_images, args.batch_size, args.fit_rows, args.tiny,
                   args.nchw, args.fit)
    print(format_table(rows))
    print(verdict(rows))
    print(f"load average at the end {os.getloadavg()}")
    return rows


if __name__ == "__main__":
    main()
