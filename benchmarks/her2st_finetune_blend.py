"""The fine-tune from `cpu_best` as a 07 blend member beside the per-backbone ridge runs, each
her2st section held out in turn (issue 26).

    .venv/bin/python -m benchmarks.her2st_finetune_blend [--out runs/her2st/ft_blend]
        [--epochs 3] [--freeze 2]

07 fits blend weights on its members' out-of-fold predictions, so a fine-tuned member needs OOF
predictions inside each rotation too: with section C5 held out, its fold C2 is predicted by a
model trained on C3 + C4. One model per training set serves every rotation: the 6 models on two
sections give every rotation's OOF (each predicts the two sections it did not see), the 4 models
on three sections predict the held-out section. Each model is `her2st_finetune_from_ridge`'s: lite0
from the shared weights, `cpu_best`'s features (stages "all", crops [1.0, 0.5], TARGET_PCA 16),
heads ridge-initialised, 3 epochs, FREEZE 2, no stopping rows, the last epoch, D4 TTA.

Per rotation, on the three fit sections (slice CV, one fold per section): the ridge members of
`benchmarks.her2st_kernel` (lite0/1/2, slice-centred, TARGET_PCA 8/16/32 by slice CV), the
fine-tune, and 07's nested global blends of the three ridge runs with and without it; then the
held-out section is scored once. "all sections" is the same on the four sections with one fold
per section (the headline a 07 run prints, with the true sections as its folds). Reads the
extraction passes of `benchmarks.her2st_backbones`. Resumable: a model's predictions are kept
in `<out>/<its sections>/pred_<section>.npy`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
import pandas as pd

from benchmarks import her2st_backbones as hb
from benchmarks.her2st_kernel import best_ridge, transform
from benchmarks.her2st_tta_cost import WEIGHTS, load_sections
from utils.config import TrainConfig
from utils.cv import score_folds
from utils.metric import KEYS, score
from utils.places import resolve

SECTIONS = ("C2", "C3", "C4", "C5")


def train_model(args: argparse.Namespace, data, images: np.ndarray, sections: np.ndarray,
                trained_on: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Fine-tune on `trained_on` from the ridge start; its last epoch's D4 predictions of every
    other section (read back when kept)."""
    from utils.models import build_model, load_weights
    from utils.train import train_unit
    from utils.units import Unit, epoch_weights, predict, to_original, unit_spec

    folder = resolve(args.out) / "+".join(trained_on)
    others = [s for s in SECTIONS if s not in trained_on]
    paths = {s: folder / f"pred_{s}.npy" for s in others}
    if all(p.is_file() for p in paths.values()):
        return {s: np.load(p) for s, p in paths.items()}
    cfg = TrainConfig(recipe="finetune", backbone="tf_efficientnet_lite0",
                      pretrained=str(WEIGHTS), img_size=224, feature_stages="all",
                      feature_crops=[1.0, 0.5], target_pca=16, tta=True, epochs=args.epochs,
                      freeze=args.freeze, patience=None, batch_size=16)
    genes = np.arange(len(data.genes))
    held = np.flatnonzero(~np.isin(sections, trained_on))
    unit = Unit("+".join(trained_on), 0, 0, np.flatnonzero(np.isin(sections, trained_on)), held,
                genes, {"all": genes})
    start = time.perf_counter()
    history = train_unit(unit, cfg, images, data.y, folder, args.epochs)
    model = build_model(unit_spec(unit, cfg), pretrained=False)
    load_weights(model, epoch_weights(folder, history[-1]["epoch"]))
    out = {}
    for s, path in paths.items():
        out[s] = to_original(model, predict(model, images, np.flatnonzero(sections == s),
                                            tta=True)).astype(np.float32)
        np.save(path, out[s])
    print(f"model on {'+'.join(trained_on)}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def finetune_member(models: dict, y: np.ndarray, sections: np.ndarray, fit: list[str],
                    held: str | None, n_test: int) -> hb.Fit:
    """The fine-tune as a member over the fit sections: fold J's OOF from the model trained on
    the other fit sections, the held-out section from the model trained on all of them (with
    no section held out, her2st's test rows are not predicted: zeros, never scored)."""
    rows = np.isin(sections, fit)
    folds = pd.factorize(sections[rows])[0]
    oof = np.zeros((rows.sum(), y.shape[1]), np.float32)
    for j in fit:
        oof[sections[rows] == j] = models[tuple(s for s in fit if s != j)][j]
    pred = models[tuple(fit)][held] if held else np.zeros((n_test, y.shape[1]), np.float32)
    return hb.Fit(oof, pred, score_folds(y[rows], oof, folds, "slices"))


def rotation(data, models: dict, sections: np.ndarray, held: str | None) -> list[dict]:
    """Members and blends with `held` out (None: all four sections, CV only)."""
    fit = [s for s in SECTIONS if s != held]
    rows = np.isin(sections, fit)
    split = hb.Split(f"without {held}" if held else "all sections", rows,
                     pd.factorize(sections[rows])[0], "slices",
                     sections == held if held else None)
    y, members = data.y[rows], {}
    for b, size in hb.BACKBONES.items():
        x = hb.recipe_features(data, b, size, None, "all", (1.0, 0.5))
        held_x = x["train"][split.held_rows] if held else x["test"]
        fx, hx = transform(x["train"][rows], held_x, split.folds, "centre")
        members[b] = best_ridge(fx, hx, y, split)
    members["fine-tune"] = finetune_member(models, data.y, sections, fit, held,
                                           len(data.test))
    ridge = {b: members[b] for b in hb.BACKBONES}
    members["07 three ridge runs"] = hb.blend_fits(y, split.folds, split.splitter, ridge)
    members["07 three ridge runs + fine-tune"] = hb.blend_fits(
        y, split.folds, split.splitter, {**ridge, "fine-tune": members["fine-tune"]})
    out = []
    for name, f in members.items():
        row = {"split": split.name, "what": name,
               **{f"cv {k}": f.cv["overall"][k] for k in KEYS[:5]},
               **{k: str(v) for k, v in f.details.items()}}
        if held:
            row.update({f"held {k}": v for k, v in score(data.y[sections == held],
                                                             f.pred).items() if k in KEYS})
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/her2st/ft_blend")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--freeze", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("KIT_CACHE_DIR", str(hb.OUT / "cache"))
    data, sections, images = load_sections()
    models = {}
    for n in (3, 2):
        for trained_on in itertools.combinations(SECTIONS, n):
            models[trained_on] = train_model(args, data, images, sections, trained_on)
    rows = [r for held in (None, *SECTIONS) for r in rotation(data, models, sections, held)]
    table = pd.DataFrame(rows)
    table.to_csv(resolve(args.out) / "rows.csv", index=False)
    held = table[table["split"] != "all sections"]
    summary = held.groupby("what", sort=False)[[f"held {k}" for k in KEYS]].mean()
    summary["held min"] = held.groupby("what", sort=False)["held score"].min()
    summary["choosing cv"] = held.groupby("what", sort=False)["cv score"].mean()
    summary["all-sections cv"] = table[table["split"] == "all sections"].set_index("what")[
        "cv score"]
    print(held.pivot(index="what", columns="split", values="held score").round(4).to_string())
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
