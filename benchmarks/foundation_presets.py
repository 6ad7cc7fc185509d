"""Every foundation-model preset built from its timm arguments (random weights, no download):
parameters, embedding size, CPU seconds per image, GFLOPs, normalisation and pooling, and an
ESTIMATE of time and memory per 1,000 patches on a T4.

The T4 numbers are not measured: time = FLOPs per patch / (30% of the T4's 65 TFLOPS fp16
tensor peak, a typical ViT inference efficiency); memory = fp16 weights + the float16 feature
cache of 1,000 patches. Big models are built one at a time and deleted; a model whose fp32
weights do not fit in 60% of the available RAM is skipped with a message.

    .venv/bin/python -m benchmarks.foundation_presets [names...]
"""

import gc
import sys
import time

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from utils.models import HUB_MODELS, create_backbone, data_config, resolve_hub_model

T4_EFFECTIVE_FLOPS = 0.30 * 65e12


def available_ram() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def count_parameters(name: str) -> int:
    """Parameters of a preset's architecture, built on the meta device (no memory)."""
    arch, kwargs = resolve_hub_model(name)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    return sum(p.numel() for p in model.parameters())


def measure(name: str) -> str:
    """One table row: build, time one forward of one 224 px image, count FLOPs, delete."""
    preset, n_params = HUB_MODELS[name], count_parameters(name)
    need = 4 * n_params
    if need > 0.6 * available_ram():
        return (f"| {name} | {n_params / 1e6:.0f} M | {preset['dim']} | skipped: fp32 weights "
                f"{need / 2**30:.1f} GiB > 60% of {available_ram() / 2**30:.1f} GiB free | | | |")
    start = time.perf_counter()
    model = create_backbone(name, pretrained=False).eval()
    build_s = time.perf_counter() - start
    size = data_config(model)["input_size"][1]
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        out = model(x)
        seconds = time.perf_counter() - start
        with FlopCounterMode(display=False) as counter:
            model(x)
    flops = counter.get_total_flops()
    assert out.shape[1] == preset["dim"] == model.num_features, (name, out.shape)
    cfg = data_config(model)
    t4_s = 1000 * flops / T4_EFFECTIVE_FLOPS
    t4_gb = 2 * n_params / 1e9 + 1000 * preset["dim"] * 2 / 1e9
    del model, out
    gc.collect()
    mean = "/".join(f"{m:.3f}" for m in cfg["mean"])
    std = "/".join(f"{s:.3f}" for s in cfg["std"])
    return (f"| {name} | {n_params / 1e6:.0f} M | {preset['dim']} | {seconds:.2f} "
            f"(build {build_s:.0f} s) | {flops / 1e9:.0f} | {mean} ± {std} | {preset['pool']} | "
            f"~{t4_s:.1f} s, ~{t4_gb:.1f} GB |")


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| preset | parameters | embedding | CPU s/img | GFLOPs/img | mean ± std | pooling | "
          "T4 per 1,000 patches (ESTIMATE) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sys.argv[1:] or HUB_MODELS:
        print(measure(name), flush=True)


if __name__ == "__main__":
    main()
