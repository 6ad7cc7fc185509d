"""03_augmentation_screening: how much each candidate augmentation changes a patch.

Screening scores each candidate by how much it changes a patch, original vs augmented, averaged
over a sample of train patches:
- `dino_sim`: cosine similarity of DINO ViT features (any timm name); 1 = unchanged.
- `lpips`: LPIPS perceptual distance (the `lpips` package); 0 = unchanged.
- `stain_shift`: 1-D Wasserstein distance between the haematoxylin and between the eosin density
  distributions of a patch, in units of their spread over the sample; 0 = same stain.
- `ssim`: structural similarity (skimage); 1 = unchanged.
DINO needs its weights from the Hugging Face hub and LPIPS its AlexNet/VGG trunk from
torchvision's download (its small linear layers ship inside the package). When they cannot be
fetched the score is left out and the screening uses the weight-free ones (stain_shift, ssim).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations: no version check

import numpy as np
import pandas as pd

from utils.augment import (
    build_transform,
    candidate_spec,
    is_geometric,
    make_policy,
    rgb_to_hed,
    save_policy,
)
from utils.bootstrap import ensure
from utils.choices import LPIPS_TRUNKS
from utils.config import FeatureSpec, ScreenConfig, to_dict
from utils.data import load_images
from utils.features import extract_features
from utils.files import run_dir, write_csv, write_json
from utils.models import HubAccessError, create_backbone

# score → "min" (keep candidates at or above the limit) or "max" (at or below)
SCORES = {"dino_sim": "min", "lpips": "max", "stain_shift": "max", "ssim": "min"}
# compared pixel by pixel: a flip looks like a new image to them, so they judge photometric
# candidates only (geometric ones by dino_sim and stain_shift)
PIXEL_ALIGNED = ("lpips", "ssim")


def sample_patches(data, n: int, seed: int = 0) -> np.ndarray:
    """n random train patches (uint8 (n, H, W, 3), in row order), or all if there are fewer."""
    images = load_images(data, "train")
    rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return np.asarray(images[rows])


def augment_images(what: str | list[dict], images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every patch through a candidate key (always applied: p=1) or through a policy's
    transform list (each with its own p), seeded."""
    import albumentations as A

    if isinstance(what, str):
        spec = candidate_spec(what)
        what = [{**spec, "params": {**spec["params"], "p": 1.0}}]
    compose = A.Compose([build_transform(item) for item in what], seed=seed)
    return np.stack([compose(image=image)["image"] for image in images])


# --- scores: each compares augmented patches with the originals, one value per patch ---------

def sorted_stains(images: np.ndarray) -> np.ndarray:
    """Each patch's haematoxylin and eosin densities, sorted: float32 (N, 2, H·W)."""
    hed = rgb_to_hed(images)[..., :2]
    return np.sort(hed.reshape(len(hed), -1, 2).transpose(0, 2, 1), axis=-1)


def stain_shift(original: np.ndarray, augmented: np.ndarray,
                scale: np.ndarray | None = None) -> np.ndarray:
    """Per patch: mean over H and E of the Wasserstein-1 distance between the densities of
    original and augmented pixels, divided by `scale` (per stain; default 1)."""
    a, b = sorted_stains(original), sorted_stains(augmented)
    if a.shape != b.shape:
        raise ValueError(f"augmented patches changed size: {original.shape} → {augmented.shape}")
    scale = np.ones(2, np.float32) if scale is None else np.asarray(scale, np.float32)
    return (np.abs(a - b).mean(-1) / scale).mean(-1)


def stain_spread(images: np.ndarray) -> np.ndarray:
    """Standard deviation of the H and E densities over all pixels of a sample: (2,)."""
    return rgb_to_hed(images)[..., :2].reshape(-1, 2).std(0)


def ssim_scores(original: np.ndarray, augmented: np.ndarray) -> np.ndarray:
    """Per patch SSIM (skimage, RGB, 7×7 window); 1 for identical patches."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(a, b, channel_axis=-1, data_range=255)
                     for a, b in zip(original, augmented)], dtype=np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def load_dino(name: str | None, pretrained: bool | str = True, img_size: int | None = None,
              seed: int = 0):
    """(timm model, note), or (None, why not) when the hub weights cannot be fetched."""
    if not name:
        return None, "off (DINO_MODEL is None)"
    try:
        model = create_backbone(name, pretrained, img_size, seed)
    except HubAccessError as err:  # offline, gated or not logged in: say so, screen without it
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        return None, (f"unavailable: the weights of {name} could not be fetched{offline}: "
                      f"{str(err).splitlines()[0][:200]}")
    return model, f"{name}, {_weights_note(pretrained)}"


def _weights_note(pretrained: bool | str) -> str:
    """How a network's weights were obtained, for the notes."""
    return {False: "random weights: mechanics only, not used for selection",
            True: "pretrained"}.get(pretrained, f"weights file {pretrained}")


def torchvision_checkpoint(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights of an LPIPS trunk once downloaded."""
    import torch
    from torchvision import models

    url = getattr(models, LPIPS_TRUNKS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(net: str | None, pretrained: bool = True):
    """(LPIPS model, note), or (None, why not) when its torchvision trunk cannot be fetched."""
    if not net:
        return None, "off (LPIPS_NET is None)"
    ensure("lpips", "03's LPIPS score")  # on first use: the bundle or PyPI
    import lpips

    checkpoint = torchvision_checkpoint(net)
    if pretrained and not checkpoint.is_file() and os.environ.get("HF_HUB_OFFLINE"):
        return None, (f"unavailable: HF_HUB_OFFLINE is set and torchvision's {net} weights are "
                      f"not in {checkpoint.parent}")
    try:
        with warnings.catch_warnings():  # torchvision: 'pretrained' is deprecated (lpips's call)
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False)
    except OSError as err:  # urllib's URLError: no network
        return None, f"unavailable: torchvision could not download the {net} trunk: {err}"
    return model, f"LPIPS {net}, {_weights_note(bool(pretrained))}"


def lpips_distance(model, original: np.ndarray, augmented: np.ndarray,
                   batch_size: int = 16) -> np.ndarray:
    """Per patch LPIPS distance; 0 for identical patches."""
    import torch

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1

    out = []
    with torch.inference_mode():
        for s in range(0, len(original), batch_size):
            a, b = original[s:s + batch_size], augmented[s:s + batch_size]
            out.append(model(tensor(a), tensor(b)).flatten())
    return torch.cat(out).numpy()


@dataclass
class Scorers:
    """Score functions of augmented patches (vs the originals), and what each one runs on."""

    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    selecting: list[str] = field(default_factory=list)  # scores that may reject a candidate


def make_scorers(images: np.ndarray, cfg: ScreenConfig) -> Scorers:
    """The four scores against `images`; networks whose weights cannot be loaded are left out."""
    scale = stain_spread(images)
    sc = Scorers(notes={"stain_shift": "weight-free", "ssim": "weight-free"})
    sc.fns["stain_shift"] = lambda aug: stain_shift(images, aug, scale)
    sc.fns["ssim"] = lambda aug: ssim_scores(images, aug)
    dino, sc.notes["dino_sim"] = load_dino(cfg.dino_model, cfg.dino_pretrained, cfg.img_size,
                                           cfg.seed)
    if dino is not None:
        spec = FeatureSpec(cfg.dino_model, cfg.dino_pretrained, cfg.img_size, tta=False)
        reference = extract_features(dino, images, spec, progress=False)
        sc.fns["dino_sim"] = lambda aug: cosine_similarity(
            reference, extract_features(dino, aug, spec, progress=False))
    model, sc.notes["lpips"] = load_lpips(cfg.lpips_net, cfg.lpips_pretrained)
    if model is not None:
        sc.fns["lpips"] = lambda aug: lpips_distance(model, images, aug)
    random = {"dino_sim": cfg.dino_pretrained is False, "lpips": not cfg.lpips_pretrained}
    sc.selecting = [s for s in SCORES if s in sc.fns and not random.get(s, False)]
    return sc


# --- screening, selection, outputs -----------------------------------------------------------

def score_augmented(what: str | list[dict], images: np.ndarray, scorers: Scorers,
                    seed: int = 0) -> dict[str, float]:
    """Mean of each available score over the patches augmented by `what`, and the seconds."""
    start = time.perf_counter()
    augmented = augment_images(what, images, seed)
    scores = {name: float(np.mean(fn(augmented))) for name, fn in scorers.fns.items()}
    return {**scores, "seconds": round(time.perf_counter() - start, 2)}


def screen_candidates(images: np.ndarray, keys: list[str], scorers: Scorers,
                      seed: int = 0) -> pd.DataFrame:
    """One row per candidate: mean of each available score over the patches, and seconds."""
    table = pd.DataFrame([{"candidate": key, "geometric": is_geometric(key),
                           **score_augmented(key, images, scorers, seed)} for key in keys])
    return table[["candidate", "geometric", *(s for s in SCORES if s in table), "seconds"]]


def select_candidates(table: pd.DataFrame, limits: dict[str, float | None],
                      selecting: list[str]) -> pd.DataFrame:
    """The table plus `kept` and `reason` (limits broken) by the `selecting` scores only."""
    reasons = pd.Series("", index=table.index)
    for score in selecting:
        limit = limits.get(score)
        if limit is None or score not in table:
            continue
        sign = "<" if SCORES[score] == "min" else ">"
        breaks = table[score] < limit if sign == "<" else table[score] > limit
        if score in PIXEL_ALIGNED:
            breaks &= ~table["geometric"]
        text = f"{score} " + table[score].map("{:.4g}".format) + f" {sign} {limit:g}; "
        reasons = reasons.where(~breaks, reasons + text)
    return table.assign(kept=reasons == "", reason=reasons.str.rstrip("; "))


def write_screening(cfg: ScreenConfig, table: pd.DataFrame, scorers: Scorers,
                    n_screened: int) -> Path:
    """config.json, screening.csv and augment_policy.json in RUN_DIR; returns the policy path."""
    folder = run_dir(cfg.run_dir)
    write_json(folder / "config.json", {**to_dict(cfg), "n_screened": n_screened})
    write_csv(folder / "screening.csv", table)
    kept, rejected = table[table["kept"]], table[~table["kept"]]
    return save_policy(
        folder / "augment_policy.json", make_policy(kept["candidate"].tolist()),
        kept=kept["candidate"].tolist(), rejected=dict(zip(rejected["candidate"],
                                                           rejected["reason"])),
        limits={s: cfg.limits[s] for s in scorers.selecting}, scores=scorers.notes,
        n_screened=n_screened, source="notebooks/03_augmentation_screening")


# --- figures ---------------------------------------------------------------------------------

def plot_scores(table: pd.DataFrame, limits: dict[str, float | None]):
    """One bar chart per score: kept (blue), rejected (red), not judged (grey); limits dashed."""
    import matplotlib.pyplot as plt

    scores = [s for s in SCORES if s in table]
    fig, axes = plt.subplots(1, len(scores), figsize=(2.6 * len(scores) + 2, 0.22 * len(table) + 1),
                             sharey=True, layout="constrained", squeeze=False)
    for ax, score in zip(axes[0], scores):
        colors = np.where(table["kept"], "tab:blue", "tab:red")
        if score in PIXEL_ALIGNED:
            colors = np.where(table["geometric"], "lightgray", colors)
        ax.barh(table["candidate"], table[score], color=colors)
        if limits.get(score) is not None:
            ax.axvline(limits[score], color="k", ls="--", lw=1)
        ax.set(title=score, xlabel=f"{'higher' if SCORES[score] == 'min' else 'lower'} = closer")
    axes[0, 0].invert_yaxis()
    return fig


def plot_examples(images: np.ndarray, table: pd.DataFrame, keys: list[str], n: int = 3,
                  seed: int = 0):
    """Rows of (original | augmented) pairs for `keys`, labelled kept or rejected."""
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    fig, axes = plt.subplots(max(len(keys), 1), 2 * n, layout="constrained", squeeze=False,
                             figsize=(2.4 * n + 1.6, 1.3 * len(keys) + 0.3))
    kept = dict(zip(table["candidate"], table["kept"]))
    for row, key in zip(axes, keys):
        augmented = augment_images(key, images[:n], seed)
        for i in range(n):
            row[2 * i].imshow(images[i])
            row[2 * i + 1].imshow(augmented[i])
        label = key.replace(":", "\n") + ("\nkept" if kept.get(key) else "\nrejected")
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for i, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[], title=("original", "augmented")[i % 2] if i < 2 * n else "")
    return fig
