"""04_adapt: self-supervised adaptation of a timm backbone on the competition's own patches.

The backbone (ImageNet weights, or any `PRETRAINED` that 05 takes) keeps training without labels
on train + test patches: two augmented views of each patch, an objective from lightly that pulls
the views of one patch together (`OBJECTIVES`: SimCLR's NT-Xent against the other patches of the
batch; BYOL's and DINO's student–teacher prediction, the teacher an EMA of the student). Views
are built from the kit's augmentation registry (`utils.choices.VIEW_TRANSFORMS`, or a 03
`augment_policy.json`) and normalised with the backbone's own timm data config. Training runs on
the kit's loop (`utils.loop`, as 05's fine-tuning): mixed precision, clipping, warmup + cosine,
checkpoints, and data parallel over DEVICES (default every visible GPU; SimCLR then draws its
negatives from every process's slice of the global batch).

A run folder holds `<run name>.safetensors` (the adapted backbone in timm layout: 05 takes it as
`PRETRAINED`, ridge and fine-tuning alike), `history.json` (one row per epoch), `curves.png`,
`config.json` (written last: a folder with it is finished) and `checkpoints/` (`last.pt` after
every epoch, atomically; each epoch's data order and views are seeded from (SEED, epoch), so a
killed run resumed with RESUME=True ends exactly as an uninterrupted one).

This module imports torch, timm and lightly; `import utils` does not import it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.augment import build_transform, read_policy
from utils.bootstrap import ensure
from utils.choices import VIEW_TRANSFORMS, check_views
from utils.config import AdaptConfig, to_dict
from utils.data import KitData, load_images
from utils.files import as_json, read_json, run_dir, write_json
from utils.loop import (
    Stepper,
    autocast,
    data_parallel_process,
    default_device,
    device_count,
    epoch_seed,
    grad_scaler,
    launch_data_parallel,
    load_checkpoint,
    loader_workers,
    make_optimizer,
    make_scheduler,
    plot_history,
    process_device,
    run_epochs,
    world,
    wrap_data_parallel,
)
from utils.models import Preprocess, create_backbone, data_config, save_weights
from utils.places import resolve
from utils.plots import figure, save_figure
from utils.runs import Stopwatch, peak_rss_gb, prepare_checkpoints

# --- views ------------------------------------------------------------------------------------


def view_items(spec: str, img_size: int) -> list[dict]:
    """The policy items of a VIEWS spec: blocks and policy files in order; crops at IMG_SIZE."""
    items = []
    for part in check_views(spec):
        block = VIEW_TRANSFORMS[part] if part in VIEW_TRANSFORMS else read_policy(part)
        items += copy.deepcopy(block)
    for item in items:
        if item["name"] == "RandomResizedCrop":
            item["params"].setdefault("size", [img_size, img_size])
    return items


def build_views(spec: str, img_size: int, image_size: tuple[int, int], seed: int = 0):
    """An albumentations Compose that makes one view: patches resized to IMG_SIZE first
    (augmenting fewer pixels), then the VIEWS transforms."""
    import albumentations as A

    first = [] if tuple(image_size) == (img_size, img_size) else [
        A.Resize(img_size, img_size, interpolation=3)]  # cv2.INTER_AREA
    views = [build_transform(item, f"VIEWS={spec!r}") for item in view_items(spec, img_size)]
    return A.Compose(first + views, seed=seed)


class ViewPairs:
    """Map-style dataset over uint8 patch arrays (train, test, …): two views of each patch as
    uint8 CHW tensors (normalisation happens on the device)."""

    def __init__(self, arrays: list[np.ndarray], transform):
        self.arrays, self.transform = arrays, transform
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        image = np.asarray(self.arrays[part][i - self.offsets[part]])
        return tuple(torch.from_numpy(np.ascontiguousarray(
            self.transform(image=image)["image"].transpose(2, 0, 1))) for _ in range(2))


def load_unlabelled(data: KitData, splits: tuple[str, ...]) -> list[np.ndarray]:
    """The uint8 patches of each split (memory-mapped cache), labels never read."""
    return [load_images(data, split) for split in splits]


# --- objectives (lightly's heads and losses) --------------------------------------------------

class SimCLR(nn.Module):
    """SimCLR: projection MLP + NT-Xent, the other patches of the batch as negatives."""

    def __init__(self, backbone: nn.Module, cfg: AdaptConfig):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"projection": SimCLRProjectionHead(
            backbone.num_features, 512, 128)})
        # negatives from every process's slice in a data-parallel run (as one big batch)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        project = self.heads["projection"]
        return self.criterion(project(self.backbone(x0)), project(self.backbone(x1)))

    def after_step(self, progress: float) -> None:
        """Nothing to update between steps."""

    def encoder(self) -> nn.Module:
        """The backbone to export."""
        return self.backbone


class Teacher(nn.Module):
    """A student's EMA copy (no gradients; `parts` are copies of the student's backbone and
    heads), updated after every step with a momentum that rises from MOMENTUM to 1 along a
    cosine (lightly's schedule)."""

    def __init__(self, *parts: nn.Module, momentum: float):
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.start = momentum
        deactivate_requires_grad(self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for part in self.parts:
                x = part(x)
        return x

    def update(self, student: list[nn.Module], progress: float) -> None:
        """EMA step towards the student's current weights."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(min(int(progress * 1000), 1000), 1000, self.start, 1.0)
        for s, t in zip(student, self.parts):
            update_momentum(s, t, m)


class BYOL(nn.Module):
    """BYOL: the student predicts the teacher's projection of the other view (no negatives)."""

    def __init__(self, backbone: nn.Module, cfg: AdaptConfig):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"projection": BYOLProjectionHead(backbone.num_features,
                                                                     1024, 256),
                                    "prediction": BYOLPredictionHead(256, 1024, 256)})
        self.teacher = Teacher(copy.deepcopy(backbone), copy.deepcopy(self.heads["projection"]),
                               momentum=cfg.momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        def predict(x: torch.Tensor) -> torch.Tensor:
            return self.heads["prediction"](self.heads["projection"](self.backbone(x)))

        return 0.5 * (self.criterion(predict(x0), self.teacher(x1))
                      + self.criterion(predict(x1), self.teacher(x0)))

    def after_step(self, progress: float) -> None:
        """Move the teacher towards the student."""
        self.teacher.update([self.backbone, self.heads["projection"]], progress)

    def encoder(self) -> nn.Module:
        """The student backbone to export (BYOL's online network)."""
        return self.backbone


class DINO(nn.Module):
    """DINO: the student matches the teacher's centred, sharpened softmax of the other view."""

    def __init__(self, backbone: nn.Module, cfg: AdaptConfig):
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        super().__init__()
        self.backbone = backbone
        def head() -> nn.Module:
            return DINOProjectionHead(backbone.num_features, 512, 64, 2048)

        self.heads = nn.ModuleDict({"projection": head()})
        teacher_head = head()  # weight-normed layers cannot be deep-copied: copy the weights
        teacher_head.load_state_dict(self.heads["projection"].state_dict())
        self.teacher = Teacher(copy.deepcopy(backbone), teacher_head, momentum=cfg.momentum)
        self.criterion = DINOLoss(output_dim=2048, warmup_teacher_temp_epochs=0)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        project = self.heads["projection"]
        student = [project(self.backbone(x0)), project(self.backbone(x1))]
        return self.criterion([self.teacher(x0), self.teacher(x1)], student)

    def after_step(self, progress: float) -> None:
        """Move the teacher towards the student."""
        self.teacher.update([self.backbone, self.heads["projection"]], progress)

    def encoder(self) -> nn.Module:
        """The teacher backbone to export (DINO's evaluated network)."""
        return self.teacher.parts[0]


OBJECTIVE_CLASSES = {"simclr": SimCLR, "byol": BYOL, "dino": DINO}


def list_objectives() -> list[str]:
    """Names OBJECTIVE accepts."""
    return list(OBJECTIVE_CLASSES)


def create_objective(cfg: AdaptConfig, backbone: nn.Module | None = None) -> nn.Module:
    """The OBJECTIVE's module (backbone, heads, any teacher and its loss), seeded."""
    if cfg.objective not in OBJECTIVE_CLASSES:
        raise ValueError(f"OBJECTIVE={cfg.objective!r} is unknown; choose from "
                         f"{list_objectives()}")
    backbone = backbone or create_backbone(cfg.backbone, cfg.pretrained, cfg.img_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    ensure("lightly", "04_adapt's OBJECTIVE")  # on first use: the bundle or PyPI
    return OBJECTIVE_CLASSES[cfg.objective](backbone, cfg)


# --- training ---------------------------------------------------------------------------------

NOT_TRAINING = ("run_dir", "overwrite", "resume", "num_workers", "devices", "data_dir",
                "n_probe")


@dataclass
class Adapted:
    """What `adapt` leaves: the weights file, the history and the seconds it took."""

    weights: Path
    history: list[dict]
    seconds: float
    reused: bool = False


def weights_path(run_dir: str | os.PathLike) -> Path:
    """Where a run's adapted backbone goes: `<RUN_DIR>/<run name>.safetensors` (one feature-cache
    name per run)."""
    folder = resolve(run_dir)
    return folder / f"{folder.name}.safetensors"


def steps_per_epoch(cfg: AdaptConfig, n_images: int) -> int:
    """Optimisation steps per epoch: full batches (at least one), at most STEPS_PER_EPOCH."""
    steps = max(1, n_images // cfg.batch_size)
    return min(steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else steps


def view_loss(preprocess: nn.Module, step: Stepper, batch) -> tuple[torch.Tensor, dict, int]:
    """The objective's loss on a batch of view pairs (normalised on the device); the pairs it
    counts are the global batch's."""
    x0, x1 = (preprocess(v.to(step.device, non_blocking=True)) for v in batch)
    with autocast(step.device):
        loss = step.forward(x0, x1)
    return loss, {}, len(x0) * world()[1]


def make_stepper(cfg: AdaptConfig, objective: nn.Module, steps: int, device: torch.device,
                 preprocess: nn.Module) -> Stepper:
    """AdamW (backbone at LR, heads at HEAD_LR) with warmup + cosine over every step, gradients
    clipped at 1; after each step the objective's teacher (if any) moves with the training's
    progress. Each process's loss is of its own slice (DDP averages them)."""
    objective.to(device)
    optimizer = make_optimizer(objective, cfg.lr, cfg.head_lr, cfg.weight_decay)
    total = cfg.epochs * steps
    scheduler = make_scheduler(optimizer, round(cfg.warmup_epochs * steps), total)
    return Stepper(objective, None, optimizer, scheduler, grad_scaler(device), None, device,
                   1.0, 1, forward=wrap_data_parallel(objective, device, freeze_bn=False),
                   compute=partial(view_loss, preprocess), global_loss=False,
                   after_step=lambda done: objective.after_step(done / total))


def adapt(cfg: AdaptConfig, arrays: list[np.ndarray]) -> Adapted:
    """Adapt the backbone on the patches of `arrays` and write the run folder; a finished run
    with the same parameters is reused (OVERWRITE=True retrains), an unfinished one resumed
    (RESUME). With DEVICES > 1 (default: every visible GPU) the epochs run data-parallel."""
    reused = reuse_adapted(cfg)
    if reused is not None:
        return reused
    folder = run_dir(cfg.run_dir)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in NOT_TRAINING}
    checkpoints = prepare_checkpoints(folder, {**settings, "n_images": sum(map(len, arrays))},
                                      cfg.resume and not cfg.overwrite, claim=False)
    (folder / "config.json").unlink(missing_ok=True)
    clock = Stopwatch(checkpoints / "elapsed.json")
    devices = device_count(cfg.devices)
    if devices > 1:
        launch_data_parallel(data_parallel_worker, (cfg, arrays, checkpoints), devices,
                             cfg.batch_size, checkpoints)
    objective, state = train_objective(cfg, arrays, checkpoints, clock)  # done: read back
    return finish(cfg, objective, state["history"], clock.total())


def data_parallel_worker(cfg: AdaptConfig, arrays: list[np.ndarray], checkpoints: Path) -> None:
    """One process of a data-parallel adaptation."""
    with data_parallel_process() as main:
        train_objective(cfg, arrays, checkpoints,
                        Stopwatch(checkpoints / "elapsed.json") if main else None)


def train_objective(cfg: AdaptConfig, arrays: list[np.ndarray], checkpoints: Path,
                    clock: Stopwatch | None = None) -> tuple[nn.Module, dict]:
    """The objective trained for EPOCHS on the loop, from `checkpoints/last.pt` if it is there;
    each epoch's data order and views seeded from (SEED, epoch)."""
    device = process_device()
    objective = create_objective(cfg)
    preprocess = Preprocess(data_config(objective.backbone, cfg.img_size)).to(device)
    dataset = ViewPairs(arrays, build_views(cfg.views, cfg.img_size, arrays[0].shape[1:3]))
    steps = steps_per_epoch(cfg, len(dataset))
    step = make_stepper(cfg, objective, steps, device, preprocess)
    state, last = {"history": [], "epoch": 0}, checkpoints / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, step)
        print(f"resumed after epoch {state['epoch']} from {last}")
    run_epochs(step, dataset, cfg.batch_size, range(state["epoch"] + 1, cfg.epochs + 1),
               lambda epoch: epoch_seed(cfg.seed, 0, epoch - 1),  # seeded from 0 since 04 began
               last, state, epoch_row, loader_workers(cfg.num_workers, device), steps,
               on_saved=clock.tick if clock is not None else None)
    return objective, state


def epoch_row(stats: dict) -> dict:
    """What history.json keeps of an epoch."""
    return {"epoch": stats["epoch"], "loss": stats["loss"], "steps": stats["steps"],
            "lr": stats["lr"], "seconds": round(stats["train_s"], 1),
            "images_per_s": round(stats["images_per_s"], 1)}


def finish(cfg: AdaptConfig, objective: nn.Module, history: list[dict],
           seconds: float) -> Adapted:
    """Weights, history, curves and config.json (last) in RUN_DIR."""
    folder = resolve(cfg.run_dir)
    weights = save_weights(objective.encoder(), weights_path(folder))
    write_json(folder / "history.json", history)
    fig = plot_history(history)
    save_figure(fig, folder, "curves")
    import matplotlib.pyplot as plt

    plt.close(fig)
    write_json(folder / "config.json", {**to_dict(cfg), "weights": str(weights),
                                        "elapsed_s": round(seconds, 1),
                                        "peak_rss_gb": peak_rss_gb()})
    return Adapted(weights, history, seconds)


def reuse_adapted(cfg: AdaptConfig) -> Adapted | None:
    """The finished run in RUN_DIR if it has the same parameters (None: none, or OVERWRITE);
    an error naming what changed if they differ."""
    folder = resolve(cfg.run_dir)
    if cfg.overwrite or not (folder / "config.json").is_file():
        return None
    saved, now = read_json(folder / "config.json"), as_json(to_dict(cfg))
    changed = {k: (saved.get(k), v) for k, v in now.items()
               if k not in ("overwrite", "resume") and saved.get(k) != v}
    if changed:
        raise FileExistsError(f"{folder} holds an adaptation with other parameters (saved, now):"
                              f" {changed}; set OVERWRITE=True or a new RUN_DIR")
    print(f"{folder} is already adapted with these parameters: reused (OVERWRITE=True redoes it)")
    return Adapted(Path(saved["weights"]), read_json(folder / "history.json"),
                   saved["elapsed_s"], reused=True)


# --- did it learn? ----------------------------------------------------------------------------

def view_agreement(backbone: nn.Module, images: np.ndarray, views: str, img_size: int,
                   seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """How well pooled features tell two views of one patch from other patches (eval mode,
    seeded views, the same for any weights): mean cosine of the centred features of positive
    pairs, of all other pairs, their gap, and top-1 retrieval (a patch's other view is the
    nearest of all second views)."""
    device = default_device()
    transform = build_views(views, img_size, images.shape[1:3], seed)
    pairs = ViewPairs([images], transform)
    preprocess = Preprocess(data_config(backbone, img_size)).to(device)
    backbone = backbone.eval().to(device)
    z = {0: [], 1: []}
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
            for k in (0, 1):
                x = preprocess(torch.stack([b[k] for b in batch]).to(device))
                z[k].append(backbone(x).float())
    # centred over all views first: pooled features share a large common part that would
    # make every pair look alike
    z0, z1 = torch.cat(z[0]), torch.cat(z[1])
    mean = torch.cat([z0, z1]).mean(0)
    z0, z1 = (nn.functional.normalize(v - mean, dim=1) for v in (z0, z1))
    sim = (z0 @ z1.T).cpu().numpy()
    n = len(sim)
    positive = float(np.diag(sim).mean())
    negative = float((sim.sum() - np.trace(sim)) / max(n * (n - 1), 1))
    top1 = float((sim.argmax(1) == np.arange(n)).mean())
    return {"positive": positive, "negative": negative, "gap": positive - negative,
            "top1": top1}


def probe_images(arrays: list[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """`n` random patches from the arrays (all if fewer), for `view_agreement`."""
    total = sum(len(a) for a in arrays)
    rows = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    return np.stack([_row(arrays, r) for r in rows])


def _row(arrays: list[np.ndarray], i: int) -> np.ndarray:
    """Row `i` of the arrays laid end to end."""
    for a in arrays:
        if i < len(a):
            return np.asarray(a[i])
        i -= len(a)
    raise IndexError(i)


def agreement_table(cfg: AdaptConfig, images: np.ndarray, weights: str | os.PathLike):
    """`view_agreement` of the starting weights (PRETRAINED) and of the adapted ones, on the
    same patches and the same seeded views: one row each."""
    import pandas as pd

    rows = {}
    for name, pretrained in (("start", cfg.pretrained), ("adapted", str(weights))):
        model = create_backbone(cfg.backbone, pretrained, cfg.img_size, cfg.seed)
        rows[name] = view_agreement(model, images, cfg.views, cfg.img_size, cfg.seed)
    return pd.DataFrame(rows).T


def plot_views(images: np.ndarray, views: str, img_size: int, n: int = 4, seed: int = 0):
    """Rows of (patch | view 1 | view 2) for the first `n` patches."""
    n = min(n, len(images))
    pairs = ViewPairs([images[:n]], build_views(views, img_size, images.shape[1:3], seed))
    fig, axes = figure(6, 2 * n, nrows=n, ncols=3, squeeze=False)
    for i, row in enumerate(axes):
        shown = [images[i], *(v.numpy().transpose(1, 2, 0) for v in pairs[i])]
        for ax, image, title in zip(row, shown, ("patch", "view 1", "view 2")):
            ax.imshow(image)
            ax.set(xticks=[], yticks=[], title=title if i == 0 else "")
    fig.suptitle(f"VIEWS = {views!r}")
    return fig
