"""Grad-CAM speed: 100 patches × 10 targets on CPU, batched (one forward pass per batch, one
backward pass per target down to the target layer: `utils.cam.compute_cams`) against
pytorch-grad-cam called once per target (a forward and a full backward pass every time).

    .venv/bin/python -m benchmarks.cam_speed [--patches 100] [--targets 10] [--genes 1000]
        [--models test_convnext:64 test_vit:64 test_convnext:224 tf_efficientnet_lite0:224]
        [--method GradCAM] [--threads 2] [--no-library]

Models are random-init timm models wrapped as the kit's GeneRegressor (its own preprocessing,
`--genes` outputs); patches are random uint8 224×224. Prints one line per model; the issue's
target is under a minute for 100 × 10 with a test model. Nothing is timed in tests.
"""

import argparse
import time

import numpy as np
import torch

from utils.cam import compute_cams, make_method
from utils.cam_layers import choose_layer
from utils.models import ModelSpec, build_model


def library_seconds(model, images: np.ndarray, genes: np.ndarray, choice, method: str,
                    batch_size: int) -> float:
    """pytorch-grad-cam's own call, once per target and batch."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = type(make_method(method, model, choice.module))(model, [choice.module],
                                                         reshape_transform=choice.reshape)
    start = time.perf_counter()
    for gene in genes:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float()
            cam(x, [ClassifierOutputTarget(int(gene))] * len(x))
    cam.activations_and_grads.release()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--genes", type=int, default=1000, help="model outputs")
    parser.add_argument("--models", nargs="+", default=["test_convnext:64", "test_vit:64",
                                                        "test_convnext:224",
                                                        "tf_efficientnet_lite0:224"])
    parser.add_argument("--method", default="GradCAM")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-library", action="store_true", help="skip the per-target baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.patches, 224, 224, 3), dtype=np.uint8)
    genes = rng.choice(args.genes, args.targets, replace=False)
    weights = np.eye(args.genes, dtype=np.float32)[genes]
    print(f"{args.patches} patches x {args.targets} targets, {args.method}, CPU, "
          f"{args.threads} threads, batch {args.batch_size}")
    for entry in args.models:
        name, _, size = entry.partition(":")
        model = build_model(ModelSpec(name, int(size), list(range(args.genes)),
                                      {"all": list(range(args.genes))})).eval()
        choice = choose_layer(model.backbone, model.preprocess.size)
        compute_cams(model, images[:2], weights[:1], choice, args.method)  # warm-up
        start = time.perf_counter()
        maps, _ = compute_cams(model, images, weights, choice, args.method,
                               batch_size=args.batch_size)
        batched = time.perf_counter() - start
        line = (f"{name} @ {size} px, layer {choice.describe()}: batched {batched:.2f} s "
                f"({maps.shape[0] * maps.shape[1] / batched:.0f} maps/s)")
        if not args.no_library:
            seconds = library_seconds(model, images, genes, choice, args.method, args.batch_size)
            line += f"; pytorch-grad-cam per target {seconds:.2f} s ({seconds / batched:.1f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
