"""What only a GPU shows, in one run of ≤ 10 minutes on one GPU, as one table; exit code 1 if a
check fails (a non-finite loss or feature, an exception, an out-of-memory error).

1. Fine-tuning a real backbone (random weights) on DACON-sized synthetic data (uint8 224 px
   patches, 3467 genes) with mixed precision: fp16 with loss scaling and bf16 (where the GPU
   has it), each for `--steps` steps on the kit's own unit setup and loop
   (`utils.train.setup_unit`, `utils.loop.make_loader`, `utils.loop.train_epoch`): loss over the
   first and last tenth of the steps, images/s, model ÷ overall images/s (goal ≤ 1.1: the loader
   keeps the GPU busy; reported, not a failure) and the peak GPU memory.
2. A hub preset's architecture (default `h-optimus-0`, ViT-g/14 + 4 registers, random weights)
   extracting float16 features with `utils.features.extract_features`: patches/s, peak memory.
3. `utils.features.auto_batch_size` on that model, then one batch of the size it chose.

`--tiny` runs the same code paths at CPU sizes (timm test models, 64 px, a few steps, 50 genes,
the preset shrunk to one narrow block) in well under a minute; off CUDA the mixed-precision rows
say "skipped: no CUDA" and one full-precision row trains instead.

    python benchmarks/gpu_check.py                       # on a GPU (Colab, Kaggle)
    python benchmarks/gpu_check.py --tiny --device cpu   # CI-sized, on CPU
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parent.parent
if str(KIT_ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` from a plain clone
    sys.path.insert(0, str(KIT_ROOT))

import numpy as np  # noqa: E402

CHECKS = ("fine-tune fp32", "fine-tune fp16 + GradScaler", "fine-tune bf16", "hub ViT features",
          "auto batch size")
FULL = {"backbone": "tf_efficientnet_lite2", "img_size": 224, "genes": 3467, "patches": 2048,
        "steps": 300, "batch": 32, "vit": "h-optimus-0", "vit_patches": 2048}
TINY = {"backbone": "test_efficientnet", "img_size": 64, "genes": 50, "patches": 32, "steps": 4,
        "batch": 8, "vit": "h-optimus-0", "vit_patches": 16}
# the preset shrunk to one block (a width whose SwiGLU hidden size is even, as timm requires)
TINY_VIT = {"depth": 1, "embed_dim": 96, "num_heads": 2, "img_size": 56}
RATIO_GOAL = 1.1
RATIO = f"model ÷ overall img/s (goal ≤ {RATIO_GOAL})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; sizes left out come from FULL, or TINY with --tiny."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="CPU-sized settings (CI)")
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value} ({TINY[name]} with --tiny)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (kit default)")
    args = parser.parse_args(argv)
    for name, value in (TINY if args.tiny else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def make_patches(n: int, size: int, genes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, 3) noisy patches of a random tint each, and (n, genes) targets that
    depend on the tint (plus noise), so a model can learn them and the loss can fall."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    images = rng.integers(0, 128, (n, size, size, 3), dtype=np.uint8)
    images += (tint * 127).astype(np.uint8)[:, None, None, :]
    y = (tint - 0.5) @ rng.normal(size=(3, genes)).astype(np.float32)
    return images, (y + 0.3 * rng.standard_normal((n, genes), dtype=np.float32))


def skip_reason(precision: str, device) -> str | None:
    """Why a fine-tuning precision cannot run here (None: it can)."""
    if precision != "fp32" and device.type != "cuda":
        return "skipped: no CUDA"
    if precision == "bf16" and not native_bf16():
        return "skipped: this GPU has no native bf16"
    return None


def native_bf16() -> bool:
    """`torch.cuda.is_bf16_supported()`, not counting emulation (a T4 emulates it, slowly)."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 counts native support only
        return torch.cuda.is_bf16_supported()


def finetune(args: argparse.Namespace, images: np.ndarray, y: np.ndarray, precision: str,
             device) -> dict:
    """One unit trained for `args.steps` steps on the kit's setup and loop at `precision`."""
    import torch

    from utils.config import TrainConfig
    from utils.data import PatchDataset
    from utils.loop import grad_scaler, loader_workers, make_loader, seed_everything, train_epoch
    from utils.train import setup_unit
    from utils.units import Unit

    rows = np.arange(args.steps * args.batch) % len(images)  # the patches, reused
    unit = Unit("gpu-check", 0, 0, rows, np.zeros(0, np.int64), np.arange(args.genes),
                {"all": np.arange(args.genes)})
    cfg = TrainConfig(recipe="finetune", backbone=args.backbone, pretrained=False,
                      img_size=args.img_size, batch_size=args.batch, epochs=1,
                      warmup_epochs=0.05, head_init="random", num_workers=args.workers)
    setup = setup_unit(unit, cfg, images, y, resume=False)
    step = setup["step"]
    if step.device != device:  # the kit trains on `process_device()`; --device cpu on a GPU
        step.model.to(device)
        step.device = device
    step.precision, step.scaler = precision, grad_scaler(device, precision)
    losses = record_losses(step)
    seed_everything(cfg.seed)
    loader = make_loader(PatchDataset(images, setup["z"], unit.train_idx, setup["transform"]),
                         args.batch, cfg.seed, loader_workers(args.workers, device), device)
    stats = train_epoch(step, loader, f"fine-tune {precision}", args.steps)
    curve = torch.stack(losses).float().cpu().numpy()
    scale = step.scaler.get_scale() if step.scaler.is_enabled() else None
    del step, setup
    return {"curve": curve, "stats": stats, "scale": scale}


def record_losses(step) -> list:
    """Keep every step's loss (detached, on the device: no extra synchronisation) by wrapping
    the Stepper's own `compute`."""
    losses, compute = [], step.compute

    def recorded(step, batch):
        loss, parts, n = compute(step, batch)
        losses.append(loss.detach())
        return loss, parts, n

    step.compute = recorded
    return losses


def finetune_row(args: argparse.Namespace, images: np.ndarray, y: np.ndarray, precision: str,
                 device) -> dict:
    """The table row of one fine-tuning precision: loss first → last tenth, speed, memory."""
    row = {"check": CHECKS[("fp32", "fp16", "bf16").index(precision)],
           "setting": f"{args.backbone}, {args.img_size} px, batch {args.batch}, {args.genes} "
                      f"genes, {args.steps} steps, random weights"}
    reason = skip_reason(precision, device)
    if reason:
        return {**row, "status": "skipped", "note": reason}
    out = finetune(args, images, y, precision, device)
    curve, stats = out["curve"], out["stats"]
    k = max(1, len(curve) // 10)
    ratio = stats["model_images_per_s"] / stats["images_per_s"]
    notes = [f"loss {'fell' if curve[-k:].mean() < curve[:k].mean() else 'did not fall'}"]
    if out["scale"] is not None:
        notes.append(f"final loss scale {out['scale']:g}")
    if ratio > RATIO_GOAL:
        notes.append(f"ratio above the {RATIO_GOAL} goal (not a failure): the loader limits")
    finite = bool(np.isfinite(curve).all()) and len(curve) == args.steps
    if not finite:
        notes.insert(0, f"non-finite loss at {int((~np.isfinite(curve)).sum())} step(s)")
    return {**row, "loss first → last": f"{curve[:k].mean():.4f} → {curve[-k:].mean():.4f}",
            "images/s": round(stats["images_per_s"], 1), RATIO: round(ratio, 3),
            "peak GPU GB": gb(stats["gpu_memory_gb"]), "status": "ok" if finite else "FAIL",
            "note": "; ".join(notes)}


def gb(value: float | None) -> float | str:
    """GB rounded for the table, "—" off CUDA."""
    return "—" if value is None else round(value, 2)


def build_vit(args: argparse.Namespace):
    """The hub preset's architecture with random weights (shrunk with --tiny) and its spec:
    float16 features, no TTA."""
    from utils.config import FeatureSpec
    from utils.models import create_backbone

    shrink = dict(TINY_VIT) if args.tiny else {}
    img_size = shrink.pop("img_size", None)
    model = create_backbone(args.vit, pretrained=False, img_size=img_size, **shrink)
    spec = FeatureSpec(args.vit, pretrained=False, img_size=img_size, tta=False, dtype="float16")
    return model, spec


class Clock:
    """Wall seconds and peak GPU memory (GB, None off CUDA) of the work inside a `with`."""

    def __init__(self, device):
        self.device, self.seconds, self.peak_gb = device, 0.0, None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.seconds = time.perf_counter() - self.start
        return False


def features_row(args: argparse.Namespace, model, spec, images: np.ndarray, device) -> dict:
    """Float16 features of the preset's architecture with the kit's extractor (batch chosen by
    `auto_batch_size`, as 05 does by default): patches/s, peak memory, finite and of its width."""
    from utils.features import extract_features
    from utils.loop import amp_dtype

    shrunk = (f" shrunk to {TINY_VIT['depth']} block of width {TINY_VIT['embed_dim']}"
              if args.tiny else "")
    amp = str(amp_dtype(device) or "off").removeprefix("torch.")
    row = {"check": "hub ViT features",
           "setting": f"{args.vit}{shrunk}, random weights, {len(images)} patches at "
                      f"{spec.img_size or images.shape[1]} px, float16 features, autocast {amp}"}
    extract_features(model, images[:2], spec, batch_size=2, device=device, progress=False)
    with Clock(device) as clock:
        feats = extract_features(model, images, spec, device=device, progress=False)
    feats = feats.astype(spec.dtype)
    ok = bool(np.isfinite(feats).all()) and feats.shape == (len(images), model.num_features)
    return {**row, "images/s": round(len(images) / clock.seconds, 1),
            "peak GPU GB": gb(clock.peak_gb), "status": "ok" if ok else "FAIL",
            "note": f"features {feats.shape[0]}×{feats.shape[1]} {feats.dtype}"
                    + ("" if ok else ", not finite or not of the model's width")}


def auto_batch_row(model, spec, images: np.ndarray, device) -> dict:
    """`auto_batch_size` on the preset, then one batch of that size through the extractor."""
    import torch

    from utils.features import auto_batch_size, extract_features
    from utils.models import Preprocess, data_config

    preprocess = Preprocess(data_config(model, spec.img_size)).to(device)
    shape = (images.shape[3], *images.shape[1:3])
    cuda = device.type == "cuda"
    free = torch.cuda.mem_get_info(device)[0] / 1e9 if cuda else None
    held = torch.cuda.memory_allocated(device) / 1e9 if cuda else 0.0  # the model's weights
    batch = auto_batch_size(model, preprocess, shape, device)
    row = {"check": "auto batch size",
           "setting": f"{spec.backbone}: chose batch {batch}"
                      + (f" with {free:.1f} GB free" if free is not None else " (CPU default)")}
    with Clock(device) as clock:
        feats = extract_features(model, images[np.arange(batch) % len(images)], spec,
                                 batch_size=batch, device=device, progress=False)
    ok = bool(np.isfinite(feats).all())
    notes = ["one batch of that size, no out-of-memory" + ("" if ok else "; not finite")]
    if cuda:  # far below 50 %: the estimate is too cautious; above 100 %: it was lucky
        notes.append(f"it took {(clock.peak_gb - held) / free:.0%} of the free memory")
    return {**row, "images/s": round(batch / clock.seconds, 1), "peak GPU GB": gb(clock.peak_gb),
            "status": "ok" if ok else "FAIL", "note": "; ".join(notes)}


def failed_row(check: str, err: BaseException) -> dict:
    """A FAIL row naming the exception (out of memory said as such)."""
    from utils.loop import is_oom

    kind = "out of memory" if is_oom(err) else type(err).__name__
    where = traceback.extract_tb(err.__traceback__)[-1]
    message = str(err).strip().splitlines()[0] if str(err).strip() else (
        f"at {Path(where.filename).name}:{where.lineno}")
    return {"check": check, "status": "FAIL", "note": f"{kind}: {message}"[:160]}


def guarded(check: str, make_row, *args) -> dict:
    """The row `make_row(*args)` returns, or a FAIL row if it raised."""
    try:
        return make_row(*args)
    except Exception as err:  # noqa: BLE001 (every failure is a row, then a non-zero exit)
        return failed_row(check, err)


def free_memory(device) -> None:
    """Drop what the last check left on the GPU, so the next one (and its auto batch) sees it."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def vit_rows(args: argparse.Namespace, images: np.ndarray, device) -> list[dict]:
    """The feature and auto-batch rows, on one build of the preset's architecture."""
    try:
        model, spec = build_vit(args)
    except Exception as err:  # noqa: BLE001
        return [failed_row(check, err) for check in CHECKS[3:]]
    return [guarded(CHECKS[3], features_row, args, model, spec, images, device),
            guarded(CHECKS[4], auto_batch_row, model, spec, images, device)]


def run_checks(args: argparse.Namespace, device) -> list[dict]:
    """Every check's row, in table order."""
    images, y = make_patches(args.patches, args.img_size, args.genes)
    precisions = ("fp16", "bf16") if device.type == "cuda" else ("fp32", "fp16", "bf16")
    rows = []
    for precision in precisions:
        check = CHECKS[("fp32", "fp16", "bf16").index(precision)]
        rows.append(guarded(check, finetune_row, args, images, y, precision, device))
        free_memory(device)
    vit_images = make_patches(args.vit_patches, args.img_size, 1, seed=1)[0]
    rows += vit_rows(args, vit_images, device)
    free_memory(device)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as one aligned text table (pandas), blanks where a check has no such number."""
    import pandas as pd

    columns = ["check", "setting", "loss first → last", "images/s", RATIO, "peak GPU GB",
               "status", "note"]
    table = pd.DataFrame(rows).reindex(columns=columns).astype(object)
    table = table.where(table.notna(), "")
    with pd.option_context("display.max_colwidth", 200, "display.width", 400):
        return table.to_string(index=False)


def describe_device(device) -> str:
    """One line: the device, torch and timm versions."""
    import timm
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"device {device} ({name}), torch {torch.__version__}, timm {timm.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run every check, print the table; 0 if none failed, 1 otherwise (2: no CUDA device)."""
    import torch

    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU runtime (Colab: Runtime → Change runtime type; "
              "Kaggle: Settings → Accelerator), or --tiny --device cpu for the CPU-sized check")
        return 2
    device = torch.device(args.device)
    start = time.perf_counter()
    rows = run_checks(args, device)
    print(describe_device(device))
    print(format_table(rows))
    failed = [row["check"] for row in rows if row["status"] == "FAIL"]
    print(f"{time.perf_counter() - start:.1f} s; the img/s ratio is a goal, not a failure; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every check ok or skipped"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
