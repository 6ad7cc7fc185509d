"""Timings as results rows: each preset's feature extraction (eager and compiled, against the
backbone's pure forward in the same mode and process), its fit and prediction at DACON shapes,
and ridge's SVDs both ways (LAPACK, the kit's Gram route); rows go to benchmarks/results/speed.csv.

    python -m benchmarks.speed benchmarks/configs/dacon_cpu.yaml [--results CSV]

Extraction is timed on a sample of demo patches (`utils.dev.demo.write_demo`) with the kit's
own `extract_features` and the preset's feature spec (random weights of the same architecture:
no download) and extrapolated linearly to every patch of the config's scale. The pure forward is
`model(x)` on resident tensors, channels_last, as many passes per patch at the same batch size,
`torch.inference_mode`. Compiled extraction's one-off compile is timed apart and counted in the
minutes. Fits run for real (`cv_ridge` / `cv_retrieval`) on random features of the preset's
width, random targets, 3 block folds. On a shared machine read the ratios: they are taken
within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
import yaml

from benchmarks.record import RESULTS, append_rows, environment
from utils.choices import TTA_VIEWS
from utils.config import TrainConfig, from_params, read_preset
from utils.cv import make_folds
from utils.data import CACHE_ENV_VAR, load_data, load_images
from utils.dev.demo import write_demo
from utils.features import cached_features, extract_features
from utils.models import create_backbone
from utils.places import kit_root
from utils.plans import run_step
from utils.train import (
    RidgePath,
    centre_by_fold,
    cv_retrieval,
    cv_ridge,
    gram_svd,
    nearest_predictions,
)

SCALES = {"dacon": {"train": 6992, "test": 2277, "genes": 3467, "img": 224},
          "tiny": {"train": 96, "test": 32, "genes": 40, "img": 64}}


def preset_config(name: str, overrides: dict) -> TrainConfig:
    """05's config of a preset file with random weights and the config's `set` (e.g. a tiny
    test backbone)."""
    values = yaml.safe_load((kit_root() / "presets" / f"{name}.yaml").read_text())
    values = {**values, "PRETRAINED": False, **overrides}
    return TrainConfig(**{key.lower(): value for key, value in values.items()})


def sample_images(folder: Path, n: int, size: int) -> np.ndarray:
    """`n` demo patches of `size` px, decoded by the kit's image cache."""
    write_demo(folder / "demo", n_train=n, n_test=1, n_genes=8, n_train_slices=1,
               image_size=size, workers=1)
    return np.asarray(load_images(load_data(folder / "demo"), "train", folder / "cache"))


def passes_per_image(cfg: TrainConfig) -> int:
    """Forward passes per patch: the TTA views (8, 4 with "flips", 1 without) times the crops,
    plus one per view for FEATURE_TILES (its n x n tiles make one batch of the same pixels)."""
    spec = cfg.feature_spec
    return TTA_VIEWS[spec.tta] * (len(spec.crops) + (spec.tiles > 1))


def time_forward(model: torch.nn.Module, n_images: int, passes: int, batch_size: int,
                 img_size: int, channels_last: bool, tiles: int = 1, tile_passes: int = 0
                 ) -> float:
    """Seconds of `passes` pure forward passes per patch of `n_images` patches, batched as the
    kit batches them, on resident random input (one warm-up pass not counted), plus
    `tile_passes` passes of each batch's `tiles` x `tiles` tiles at 1/tiles of the size."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = torch.randn(batch_size, 3, img_size, img_size).contiguous(memory_format=fmt)
    side = img_size // tiles
    tile = torch.randn(batch_size * tiles ** 2, 3, side, side).contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x)
        if tile_passes:
            model(tile)
        start = time.perf_counter()
        for first in range(0, n_images, batch_size):
            n = min(batch_size, n_images - first)
            for _ in range(passes):
                model(x[:n])
            for _ in range(tile_passes):
                model(tile[:n * tiles ** 2])
        return time.perf_counter() - start


@contextlib.contextmanager
def compile_once():
    """torch.compile memoised per (model, stages) inside the block, so the timed extraction runs
    the graph its warm-up call compiled. (The kit builds one compiled function per
    `extract_features` call: a re-trace of a few seconds per split, paid once per run.)"""
    real, memo = torch.compile, {}

    def once(fn, **kwargs):
        key = (id(fn.args[0]), repr(fn.keywords)) if isinstance(fn, partial) else id(fn)
        if key not in memo:
            memo[key] = real(fn, **kwargs)
        return memo[key]

    with mock.patch.object(torch, "compile", once):
        yield


def time_extraction(model: torch.nn.Module, images: np.ndarray, cfg: TrainConfig,
                    batch_size: int, compile_: bool) -> tuple[float, float, np.ndarray]:
    """Seconds of the kit's `extract_features` on the sample after a one-batch warm-up call
    (compiled: the compile happens there), the warm-up's seconds, and the features."""
    cpu = torch.device("cpu")
    start = time.perf_counter()
    extract_features(model, images[:batch_size], cfg.feature_spec, batch_size, cpu, False,
                     compile=compile_)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    features = extract_features(model, images, cfg.feature_spec, batch_size, cpu, False,
                                compile=compile_)
    return time.perf_counter() - start, warm_up, features


def measure_extraction(cfg: TrainConfig, images: np.ndarray, batch_size: int,
                       nchw: bool = False, compiled: bool = True) -> dict:
    """Kit extraction vs pure channels_last forward (the kit's format), eager and, with
    `compiled`, both through torch.compile (static shapes, as the kit compiles); `nchw` also
    times the eager NCHW forward."""
    model = create_backbone(cfg.backbone, False, cfg.img_size, cfg.seed)
    spec = cfg.feature_spec
    n, size = len(images), spec.img_size or 224
    whole, tiled = TTA_VIEWS[spec.tta] * len(spec.crops), TTA_VIEWS[spec.tta] * (spec.tiles > 1)
    forward = partial(time_forward, n_images=n, passes=whole, batch_size=batch_size,
                      img_size=size, tiles=spec.tiles, tile_passes=tiled)
    out = {"n": n, "passes": passes_per_image(cfg),
           "eager_forward_s": forward(model, channels_last=True)}
    if nchw:
        out["nchw_forward_s"] = forward(model, channels_last=False)
    out["eager_extract_s"], _, features = time_extraction(model, images, cfg, batch_size, False)
    out["width"] = features.shape[1]
    if compiled:
        with compile_once():
            fast = torch.compile(model, dynamic=False)
            out["compiled_forward_s"] = forward(fast, channels_last=True)
            out["compiled_extract_s"], out["compile_s"], same = time_extraction(
                model, images, cfg, batch_size, True)
        out["max_diff"] = float(np.abs(same - features).max())
    return out


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


@dataclass(frozen=True)
class SpeedConfig:
    """A speed benchmark (see `read_config`)."""

    name: str
    scale: str = "dacon"
    presets: tuple[str, ...] = ("cpu_best",)
    fit: tuple[str, ...] = ("cpu_best",)
    n_images: int = 64
    batch_size: int = 16
    compile: bool = True
    set: dict = field(default_factory=dict)
    run: tuple[str, ...] = ()
    ridge_rows: tuple[int, ...] = ()
    ridge_width: int = 3584
    target_pca: int = 16


def read_config(path: str | os.PathLike) -> SpeedConfig:
    """A YAML speed config: `scale` (dacon or tiny), `presets` (extraction timed), `fit`
    (presets whose fit is timed), `n_images` and `batch_size` of the extraction sample,
    `compile`, `set` (parameters for every preset), `run` (presets run end to end on a demo
    set of the scale, every stage measured), `ridge_rows` (row counts of the SVD comparison),
    `ridge_width`, `target_pca`."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(SpeedConfig)}
    if set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - known)}; known {sorted(known)}")
    if raw.get("scale", "dacon") not in SCALES:
        raise ValueError(f"{path}: scale must be one of {list(SCALES)}")
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return SpeedConfig(**{"name": path.stem, **raw})


def extraction_rows(name: str, cfg: TrainConfig, ext: dict, total: int) -> list[dict]:
    """Extraction rows, eager and compiled: images/s on the sample, ratio to the pure forward
    in the same mode, minutes extrapolated to `total` patches (compiled: with the compile)."""
    rows = []
    for mode in ("eager", "compiled"):
        if f"{mode}_extract_s" not in ext:
            continue
        seconds, compile_s = ext[f"{mode}_extract_s"], ext.get("compile_s", 0.0)
        extra = compile_s if mode == "compiled" else 0.0
        detail = (f"{ext['passes']} passes per patch, width {ext['width']}" + (
            f", compile {compile_s:.1f} s, max |diff| vs eager {ext['max_diff']:.1e}"
            if mode == "compiled" else ""))
        rows.append({"item": name, "stage": "extraction", "mode": mode, "size": ext["n"],
                     "seconds": seconds, "per_s": ext["n"] / seconds,
                     "ratio_to_forward": seconds / ext[f"{mode}_forward_s"],
                     "minutes_at_scale": (seconds / ext["n"] * total + extra) / 60,
                     "detail": detail})
    return rows


def preset_rows(bench: SpeedConfig, images: np.ndarray) -> list[dict]:
    """Every preset's extraction rows (one extraction per feature spec), fit, predict and end
    to end (the kit's mode: compiled if measured)."""
    sizes, done, rows = SCALES[bench.scale], {}, []
    total = sizes["train"] + sizes["test"]
    for name in bench.presets:
        cfg = preset_config(name, bench.set)
        tag = cfg.feature_spec.tag
        if tag not in done:
            done[tag] = measure_extraction(cfg, images, bench.batch_size, False, bench.compile)
        ext = extraction_rows(name, cfg, done[tag], total)
        rows += ext
        if name not in bench.fit:
            continue
        fit = time_fit(cfg, done[tag]["width"], sizes["train"], sizes)
        stage = "retrieval fit" if cfg.recipe == "retrieval" else "ridge fit"
        rows += [{"item": name, "stage": stage, "mode": "", "size": fit["rows"],
                  "seconds": fit["fit_s"], "minutes_at_scale": fit["fit_s"] / 60},
                 {"item": name, "stage": "predict", "mode": "", "size": sizes["test"],
                  "seconds": fit["predict_s"], "minutes_at_scale": fit["predict_s"] / 60},
                 {"item": name, "stage": "end to end", "mode": ext[-1]["mode"], "size": total,
                  "minutes_at_scale": ext[-1]["minutes_at_scale"] + fit["fit_s"] / 60}]
    return rows


def run_rows(bench: SpeedConfig, folder: Path) -> list[dict]:
    """Each `run` preset end to end on a demo set of the scale, as 05 runs it (random weights
    of the architecture): decoding the patches, extracting the features (the kit's compile
    mode), the fit and the test prediction, each measured, not extrapolated; and the pure
    forward of the same passes on `n_images` resident patches in the same process, scaled to
    every patch, for extraction's ratio to it."""
    sizes, rows = SCALES[bench.scale], []
    total = sizes["train"] + sizes["test"]
    seconds, data_dir = timed(write_demo, folder / "data", sizes["train"], sizes["test"],
                              sizes["genes"], 3, sizes["img"], 0, False, os.cpu_count() or 2)
    print(f"demo set of {total} patches written in {seconds / 60:.1f} min", flush=True)
    with mock.patch.dict(os.environ, {CACHE_ENV_VAR: str(folder / "cache")}):
        data = load_data(data_dir)
        decode_s, _ = timed(lambda: [load_images(data, split) for split in ("train", "test")])
        for name in bench.run:
            cfg = from_params(TrainConfig, {**read_preset(name), "PRETRAINED": False,
                                            **bench.set, "DATA_DIR": str(data_dir),
                                            "RUN_DIR": str(folder / "runs" / name)})
            extract_s, _ = timed(cached_features, data, cfg.feature_spec, cfg.batch_size, None,
                                 cfg.compile)
            fit_s, _ = timed(run_step, cfg, data)
            forward_s = sample_forward(cfg, bench) / bench.n_images * total
            rows += measured(name, total, decode_s, extract_s, forward_s, fit_s)
            print(pd.DataFrame(rows[-4:])[["item", "stage", "minutes_at_scale"]], flush=True)
    return rows


def sample_forward(cfg: TrainConfig, bench: SpeedConfig) -> float:
    """Seconds of the preset's pure forward passes (compiled, as the kit extracts) on
    `n_images` patches of random input."""
    spec = cfg.feature_spec
    model = create_backbone(cfg.backbone, False, cfg.img_size, cfg.seed)
    model = torch.compile(model.eval().to(memory_format=torch.channels_last), dynamic=False)
    return time_forward(model, bench.n_images, TTA_VIEWS[spec.tta] * len(spec.crops),
                        bench.batch_size, spec.img_size or 224, True, spec.tiles,
                        TTA_VIEWS[spec.tta] * (spec.tiles > 1))


def measured(name: str, total: int, decode_s: float, extract_s: float, forward_s: float,
             fit_s: float) -> list[dict]:
    """The rows of one measured end-to-end run (`run_rows`)."""
    row = {"item": name, "mode": "measured", "size": total}
    return [{**row, "stage": "decode patches", "seconds": decode_s,
             "minutes_at_scale": decode_s / 60},
            {**row, "stage": "extraction", "seconds": extract_s, "per_s": total / extract_s,
             "ratio_to_forward": extract_s / forward_s, "minutes_at_scale": extract_s / 60,
             "detail": "pure forward timed on a sample in the same process, scaled"},
            {**row, "stage": "fit + predict", "seconds": fit_s, "minutes_at_scale": fit_s / 60,
             "detail": "05's run on the cached features: nested CV, test prediction, files"},
            {**row, "stage": "end to end", "seconds": decode_s + extract_s + fit_s,
             "minutes_at_scale": (decode_s + extract_s + fit_s) / 60}]


def ridge_features(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """Standardised random features of rank ~width/2 plus a little noise (a backbone's stage
    maps are collinear)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width // 2)) @ rng.standard_normal((width // 2, width))
    x += 0.01 * rng.standard_normal((rows, width))
    return (x - x.mean(0)) / x.std(0)


def timed(fn, *args):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def svd_rows(rows: int, width: int, genes: int, k: int) -> list[dict]:
    """Ridge's SVDs on one shape, LAPACK's and the Gram route: the features' and the targets'
    top-k axes; the largest prediction difference relative to the predictions' spread."""
    x = ridge_features(rows, width)
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
    features, targets = f"ridge svd {width} features", f"ridge svd {genes} genes"
    return [{"item": features, "stage": "features' SVD", "mode": "lapack", "size": rows,
             "seconds": lapack_s},
            {"item": features, "stage": "features' SVD", "mode": "gram", "size": rows,
             "seconds": gram_s, "detail": f"max rel. prediction diff {diff:.0e}"},
            {"item": targets, "stage": f"top-{k} target axes", "mode": "lapack", "size": rows,
             "seconds": top_lapack_s},
            {"item": targets, "stage": f"top-{k} target axes", "mode": "gram", "size": rows,
             "seconds": top_gram_s}]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a YAML file under benchmarks/configs/")
    parser.add_argument("--results", default=str(RESULTS / "speed.csv"))
    args = parser.parse_args(argv)
    bench = read_config(args.config)
    load = os.getloadavg()
    rows = []
    if bench.presets:
        with tempfile.TemporaryDirectory() as tmp:
            images = sample_images(Path(tmp), bench.n_images, SCALES[bench.scale]["img"])
            rows += preset_rows(bench, images)
    if bench.run:
        with tempfile.TemporaryDirectory() as tmp:
            rows += run_rows(bench, Path(tmp))
    for n in bench.ridge_rows:
        rows += svd_rows(n, bench.ridge_width, SCALES[bench.scale]["genes"], bench.target_pca)
    note = f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    rows = [{"config": bench.name, **row, "load": note, **environment(),
             "source": "benchmarks.speed"} for row in rows]
    append_rows(Path(args.results), rows)
    print(pd.DataFrame(rows)[["item", "stage", "mode", "size", "seconds", "ratio_to_forward",
                              "minutes_at_scale"]].round(3).to_string(index=False))
    return rows


if __name__ == "__main__":
    main()
