"""Shared fixtures: a tiny DACON-shaped data folder built from synthetic PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

KIT_ROOT = Path(__file__).resolve().parent.parent
if str(KIT_ROOT) not in sys.path:  # `import utils` however pytest is started
    sys.path.insert(0, str(KIT_ROOT))

GENES = ("G1", "G2", "G3", "MT-CO1")


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    """Image and feature caches of the tests go to a temporary folder, not the kit's cache/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KIT_CACHE_DIR", str(tmp_path_factory.mktemp("kit-cache")))
    yield
    mp.undo()
SIZE = (16, 16)


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as a PNG: (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def make_dacon(tmp_path: Path, n_train: int = 12, n_test: int = 5,
               genes: tuple[str, ...] = GENES, size: tuple[int, int] = SIZE,
               seed: int = 0) -> Path:
    """A complete DACON-layout folder under `tmp_path/dacon`: PNGs, train/test/sample CSVs."""
    root = Path(tmp_path) / "dacon"
    rng = np.random.default_rng(seed)
    rows = {}
    for split, prefix, n in (("train", "TRAIN", n_train), ("test", "TEST", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        ids = [f"{prefix}_{i:04d}" for i in range(n)]
        for i in ids:
            write_png(root / split / f"{i}.png", rng.integers(0, 256, (*size, 3)))
        rows[split] = pd.DataFrame({"ID": ids, "path": [f"./{split}/{i}.png" for i in ids]})
    y = rng.gamma(2.0, 1.0, size=(n_train, len(genes))).round(4)
    train = pd.concat([rows["train"], pd.DataFrame(y, columns=list(genes))], axis=1)
    sample = pd.DataFrame(0.0, index=range(n_test), columns=list(genes))
    sample.insert(0, "ID", rows["test"]["ID"])
    train.to_csv(root / "train.csv", index=False)
    rows["test"].to_csv(root / "test.csv", index=False)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def dacon_dir(tmp_path: Path) -> Path:
    """A fresh tiny DACON folder (12 train, 5 test patches of 16x16, genes G1 G2 G3 MT-CO1)."""
    return make_dacon(tmp_path)


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory):
    """The demo set (small) and every notebook executed on it with the QUICK settings."""
    from utils.dev.demo import write_demo
    from utils.dev.pipeline import demo_parameters, run_notebooks

    root = tmp_path_factory.mktemp("demo")
    data_dir = write_demo(root / "data", n_train=240, n_test=80, n_genes=400, seed=1)
    params = demo_parameters(str(data_dir), str(root / "runs"), str(root / "demo.csv"),
                             quick=True)
    executed = run_notebooks(params, root / "executed")
    return {"data": data_dir, "runs": root / "runs", "submission": root / "demo.csv",
            "executed": executed}


# --- image-blind baselines: what an "it learns" assertion must beat ---------------------------

def blind_predictions(y_train: np.ndarray, n_rows: int, seed: int = 0,
                      noise: float = 0.05) -> np.ndarray:
    """The train mean profile for every row, plus a little noise (per-gene sd × `noise`)."""
    rng = np.random.default_rng(seed)
    sd = y_train.std(axis=0)
    return y_train.mean(axis=0) + noise * sd * rng.standard_normal((n_rows, y_train.shape[1]))


def blind_cv_score(y: np.ndarray, folds: np.ndarray, seeds: int = 5) -> float:
    """The best mean-over-folds score of the mean profile plus noise (several noise draws and
    levels), each fold predicted from the other folds' rows: what an image-blind model gets."""
    from utils.metric import score

    best = -1.0
    for seed in range(seeds):
        for noise in (0.0, 0.01, 0.05, 0.2):
            per_fold = [score(y[folds == k], blind_predictions(y[folds != k], (folds == k).sum(),
                                                               seed, noise))["score"]
                        for k in np.unique(folds)]
            best = max(best, float(np.mean(per_fold)))
    return best


def shuffled_images_copy(data_dir: Path, dest: Path, seed: int = 0) -> Path:
    """A copy of a DACON folder whose train patches are shuffled across rows (targets kept):
    a model trained on it sees images unrelated to their expression."""
    data_dir, dest = Path(data_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        (dest / name).symlink_to((data_dir / name).resolve(), target_is_directory=True)
    train = pd.read_csv(data_dir / "train.csv", dtype={"ID": str, "path": str})
    train["path"] = train["path"].to_numpy()[np.random.default_rng(seed).permutation(len(train))]
    train.to_csv(dest / "train.csv", index=False)
    for name in ("test.csv", "sample_submission.csv"):
        (dest / name).write_bytes((data_dir / name).read_bytes())
    return dest


@pytest.fixture(scope="session")
def github_zip(tmp_path_factory) -> Path:
    """GitHub's "Download ZIP" of the kit: `git archive --prefix=mai-kit-main/` of this tree
    (its uncommitted changes included, as `git stash create` records them)."""
    tree = subprocess.run(["git", "stash", "create"], cwd=KIT_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip() or "HEAD"
    out = tmp_path_factory.mktemp("github") / "mai-kit-main.zip"
    subprocess.run(["git", "archive", "--format=zip", "--prefix=mai-kit-main/", "-o", out, tree],
                   cwd=KIT_ROOT, check=True)
    return out


WHEEL_CACHE = KIT_ROOT / "dist" / "wheel-cache"  # the bundle builder's cache: reruns are fast


@pytest.fixture(scope="session")
def kit_clone(tmp_path_factory) -> Path:
    """A clean clone of the kit at HEAD: what a user downloads, and what KIT_REPO serves."""
    clone = tmp_path_factory.mktemp("clone") / "mai-kit"
    subprocess.run(["git", "clone", "-q", KIT_ROOT.as_uri(), str(clone)], check=True)
    return clone


def build_bundle(clone: Path, out: Path, *args) -> tuple[Path, float]:
    """`python -m utils.dev.bundle` run in a clone of the kit; (the zip, seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "utils.dev.bundle", "--out", str(out),
                           "--cache", str(WHEEL_CACHE), *map(str, args)], cwd=clone,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(clone)})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, time.perf_counter() - start


# --- the kit's definition of nested: a fold's OOF predictions ignore its own labels ------------

def replaced_labels(y: np.ndarray, folds: np.ndarray, k: int, how: str = "noise",
                    seed: int = 0) -> np.ndarray:
    """A copy of y whose rows of fold k are replaced: `noise` (each gene's mean and sd, normal
    draws) or `other` (another fold's rows, repeated to fit)."""
    y = np.array(y, dtype=np.float64, copy=True)
    rows = np.flatnonzero(folds == k)
    if how == "noise":
        rng = np.random.default_rng(seed + int(k))
        y[rows] = y.mean(0) + y.std(0) * rng.standard_normal((len(rows), y.shape[1]))
    elif how == "other":
        donor = np.flatnonzero(folds == next(j for j in np.unique(folds) if j != k))
        y[rows] = y[np.resize(donor, len(rows))]
    else:
        raise ValueError(f"how={how!r}: 'noise' or 'other'")
    return y


def assert_label_invariant(oof_of, y: np.ndarray, folds: np.ndarray, check_folds=None,
                           how: str = "noise", atol: float = 0.0,
                           expect_change: bool = True) -> None:
    """Assert what the kit calls nested: the OOF predictions of fold k do not change when the
    labels of fold k are replaced (`replaced_labels`), for every fold k (or `check_folds`).

    `oof_of(y)` runs a recipe (ridge, retrieval, fine-tuning, 07's blend …) on targets y and
    returns its OOF predictions (rows, genes). With `expect_change`, some other fold's OOF
    predictions must move, so that the check is not vacuous (a recipe that ignores its labels
    passes anything). Fails naming the fold and the largest change of its predictions.
    """
    folds = np.asarray(folds)
    base = np.asarray(oof_of(np.asarray(y)), dtype=np.float64)
    moved = False
    for k in np.unique(folds) if check_folds is None else check_folds:
        again = np.asarray(oof_of(replaced_labels(y, folds, k, how)), dtype=np.float64)
        rows = folds == k
        change = float(np.abs(again[rows] - base[rows]).max())
        assert change <= atol, (f"fold {k}: its OOF predictions moved by up to {change:.3g} when "
                                f"its own labels were replaced ({how}): a choice reads them")
        moved |= bool(np.abs(again[~rows] - base[~rows]).max() > atol)
    assert moved or not expect_change, "no OOF prediction moved: the check tests nothing"
