"""Simulate the leaderboard on ../shared/her2st: train on three sections, score the fourth.

For each held-out section, a DACON-layout folder is made from the other three sections (images
linked, not copied) with the held-out section as its test set; 05's recipes run with the kit's CV
on the three training sections, and the held-out section is scored as the leaderboard would
score the test slice. The table compares what CV says (mean over folds, range, pooled OOF) with
the held-out score, for each recipe and splitter, and per recipe the headline − held-out gap
averaged over the sections held out.

Which numbers choose and which confirm: inside each rotation every choice (alpha, k and
temperature, epochs, blend weights) is made by the kit's nested CV on the three training
sections; the "cv" columns are that selection-side estimate. The held-out section plays no
part in any choice: the "unseen" columns only confirm.

    .venv/bin/python -m benchmarks.her2st_unseen [--sections C2 C3 C4 C5]
        [--recipes ridge retrieval finetune] [--cv slices blocks] [--tag after]
        [--set LAYER_DECAY=0.75 MIXUP=0.4 ...]

`--set` overrides 05 parameters (YAML values) for every recipe run; the run folders are named
after them (and after `--tag`), so a variant never reuses another's results. Fine-tuning runs
with 05's defaults (PATIENCE included) but 3 epochs and `FREEZE = 2`, as the README's rows.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from utils.config import TrainConfig
from utils.data import load_data
from utils.metric import KEYS, score
from utils.places import kit_root

SHARED = kit_root().parent / "shared"
HER2ST = SHARED / "her2st"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def make_subset(held_out: str, folder: Path) -> np.ndarray:
    """A DACON folder of the other sections with `held_out` as test set; returns its truth."""
    train = pd.read_csv(HER2ST / "train.csv", dtype={"ID": str, "path": str})
    sections = pd.read_csv(HER2ST / "train_sections.csv", dtype=str).set_index("ID")
    section = sections.loc[train["ID"], "section"].to_numpy()
    if held_out not in set(section):
        raise SystemExit(f"no section {held_out!r}; her2st has {sorted(set(section))}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        link = folder / name
        if not link.exists():
            link.symlink_to(HER2ST / "train", target_is_directory=True)
    keep, test = train[section != held_out], train[section == held_out]
    keep.to_csv(folder / "train.csv", index=False)
    test[["ID", "path"]].to_csv(folder / "test.csv", index=False)
    sample = test[["ID"]].assign(**{g: 0.0 for g in train.columns[2:]})
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return test.iloc[:, 2:].to_numpy(dtype=np.float64)


def recipe_config(recipe: str, data_dir: Path, run_dir: Path, cv: str) -> TrainConfig:
    """The benchmark's settings: lite0 ImageNet weights from the shared file, 224 px."""
    base = TrainConfig(data_dir=str(data_dir), run_dir=str(run_dir), recipe=recipe,
                       backbone="tf_efficientnet_lite0", pretrained=str(WEIGHTS), img_size=224,
                       cv=cv, n_folds=4, overwrite=False)
    if recipe == "finetune":  # the README's fine-tuning rows; PATIENCE as 05's default
        base = replace(base, epochs=3, freeze=2)
    return base


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per recipe and splitter: the mean over held-out sections of the CV headline (selection
    side) and of the held-out score (confirmation only), and their gap."""
    grouped = table.groupby(["recipe", "cv"], sort=False)
    summary = grouped.agg(sections=("held out", "count"), cv_mean=("cv mean", "mean"),
                          unseen_mean=("unseen", "mean"))
    summary["gap (cv − unseen)"] = summary["cv_mean"] - summary["unseen_mean"]
    summary["largest |gap| of a section"] = grouped.apply(
        lambda t: (t["cv mean"] - t["unseen"]).abs().max())
    return summary.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["C3", "C5"])
    parser.add_argument("--recipes", nargs="+", default=["ridge"])
    parser.add_argument("--cv", nargs="+", default=["slices", "blocks"])
    parser.add_argument("--out", default="runs/her2st/unseen")
    parser.add_argument("--tag", default="", help="appended to run folders and the table name")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="05 parameters to override, e.g. LAYER_DECAY=0.75 EMA=0.99")
    args = parser.parse_args()
    overrides = {k.lower(): yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.set)}
    suffix = "".join(f"_{k}{v}" for k, v in overrides.items()).replace(" ", "")
    suffix += f"_{args.tag}" if args.tag else ""
    if not HER2ST.is_dir():
        raise SystemExit(f"{HER2ST} is absent: this benchmark needs ../shared/her2st")
    from utils import train

    out = kit_root() / args.out
    os.environ.setdefault("KIT_CACHE_DIR", str(out / "cache"))  # features reused across runs
    rows = []
    for held_out in args.sections:
        data_dir = out / f"without_{held_out}" / "data"
        truth = make_subset(held_out, data_dir)
        data = load_data(data_dir)
        for recipe in args.recipes:
            for cv in args.cv:
                cfg = replace(recipe_config(recipe, data_dir, out / f"without_{held_out}" /
                                            f"{recipe}_{cv}{suffix}", cv), **overrides)
                start = time.perf_counter()
                folds, splitter = train.make_cv_folds(cfg, data)
                run = train.train(cfg, data, folds, splitter)
                unseen = score(truth, run.test_pred)
                row = {"held out": held_out, "recipe": recipe + suffix, "cv": splitter,
                       "fold sizes": "/".join(str(int(n)) for n in np.bincount(folds)),
                       "selection": "; ".join(sorted({str(f.get("selection")) for f in
                                                      run.cv["folds"]})),
                       "folds": run.cv["n_folds"], "cv mean": run.cv["overall"]["score"],
                       "cv min": run.cv["min"]["score"], "cv max": run.cv["max"]["score"],
                       "oof": run.cv["oof"]["score"], "unseen": unseen["score"],
                       **{f"unseen {k}": unseen[k] for k in KEYS[1:5]},
                       **{f"cv {k}": run.cv["overall"][k] for k in KEYS[1:5]},
                       "seconds": round(time.perf_counter() - start)}
                if "optimistic" in run.cv:
                    row["cv best-on-fold (optimistic)"] = \
                        run.cv["optimistic"]["mean_best_score_on_fold"]
                rows.append(row)
                print(pd.DataFrame([row]).round(4).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.round(4).to_string(index=False))
    name = f"unseen_table{'_' + args.tag if args.tag else ''}"
    table.to_csv(out / f"{name}.csv", index=False)
    summary = summarise(table)
    print("\nheadline (cv: used for choosing) vs held-out sections (unseen: confirming only)")
    print(summary.round(4).to_string(index=False))
    summary.to_csv(out / f"{name}_summary.csv", index=False)


if __name__ == "__main__":
    main()
