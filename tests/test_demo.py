"""The synthetic demo set: DACON layout, gene names, determinism, H&E-like images, and an image
signal that a model can learn under block CV."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.cv import make_folds
from utils.data import load_data, load_images
from utils.demo import make_gene_names, make_stains, write_demo
from utils.metric import score

SMALL = dict(n_train=90, n_test=30, n_genes=200, image_size=64)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo") / "d", **SMALL)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """A larger set for the learning test (240 train spots)."""
    return write_demo(tmp_path_factory.mktemp("demo") / "d", n_train=240, n_test=60,
                      n_genes=300, image_size=64, seed=3)


def test_layout_is_dacon(small):
    train = pd.read_csv(small / "train.csv")
    test = pd.read_csv(small / "test.csv")
    sample = pd.read_csv(small / "sample_submission.csv")
    assert list(train.columns[:2]) == ["ID", "path"] and len(train.columns) == 202
    assert train["path"].iloc[0] == "./train/TRAIN_0000.png"
    assert list(test.columns) == ["ID", "path"] and list(sample["ID"]) == list(test["ID"])
    assert list(sample.columns[1:]) == list(train.columns[2:])
    assert (sample.iloc[:, 1:] == 0).all().all()
    with Image.open(small / "test" / "TEST_0007.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    load_data(small)  # passes every check of the kit


def test_gene_names_look_like_the_real_list():
    names = make_gene_names(3467)
    assert len(names) == len(set(names)) == 3467
    assert sum(n.startswith("MT-") for n in names) == 13
    assert any(n.startswith(("RPL", "RPS")) for n in names)
    assert any(n.startswith("LINC") for n in names)
    clones = [n for n in names if n[:2] in ("AC", "AL") and "." in n]
    assert len(clones) > 100 and all(n.rsplit(".", 1)[1].isdigit() for n in clones)
    assert "ALB" in names and make_gene_names(3467) == names
    assert make_gene_names(3467, seed=1) != names
    assert len(set(make_gene_names(7))) == 7


def test_deterministic_for_a_seed(small, tmp_path):
    again = write_demo(tmp_path / "again", **SMALL)
    assert (again / "train.csv").read_bytes() == (small / "train.csv").read_bytes()
    for name in ("train/TRAIN_0003.png", "test/TEST_0011.png"):
        assert (again / name).read_bytes() == (small / name).read_bytes()
    other = write_demo(tmp_path / "other", **{**SMALL, "seed": 5})
    assert (other / "train.csv").read_bytes() != (small / "train.csv").read_bytes()


def test_targets_are_realistic(small):
    data = load_data(small)
    y = data.y
    assert np.isfinite(y).all() and (np.ptp(y, axis=0) > 0).all()
    truth = pd.read_csv(small / "demo_test_truth.csv").iloc[:, 1:].to_numpy()
    assert (np.ptp(truth, axis=0) > 0).all()
    assert -0.1 <= y.min() < 0  # tiny negatives, as in batch-corrected data
    means = y.mean(axis=0)
    assert means.max() / max(means.min(), 1e-6) > 100  # scales span orders of magnitude


def test_images_look_like_h_and_e(small):
    from skimage.color import rgb2hed

    data = load_data(small)
    images = np.asarray(load_images(data, "train"), dtype=np.float64)
    mean_rgb = images.mean(axis=(0, 1, 2))
    assert mean_rgb[0] > mean_rgb[1] and mean_rgb[2] > mean_rgb[1]  # pink/purple, not green
    hematoxylin = np.array([rgb2hed(im / 255)[..., 0].mean() for im in images])
    corr = [abs(np.corrcoef(hematoxylin, g)[0, 1]) for g in data.y.T]
    assert np.nanmax(corr) > 0.4  # nuclei vary between spots and some genes follow them


def test_test_slice_has_a_mild_stain_shift():
    stains = make_stains(4, seed=0)  # 3 train slices + the test slice

    def angle(a, b):
        return np.degrees(np.arccos(np.clip(a @ b, -1, 1)))

    train_h = stains[:3, 0]
    between_train = max(angle(a, b) for a in train_h for b in train_h)
    to_test = min(angle(stains[3, 0], h) for h in train_h)
    assert between_train < to_test < 15  # shifted, but still haematoxylin


def test_rows_are_stored_slice_by_slice(small):
    slices = pd.read_csv(small / "demo_slices.csv")["slice"].tolist()
    assert slices == sorted(slices) and len(set(slices)) == 3


def test_skip_when_complete_refuse_foreign_folder(small, tmp_path):
    stamp = (small / "train.csv").stat().st_mtime_ns
    write_demo(small, **SMALL)
    assert (small / "train.csv").stat().st_mtime_ns == stamp  # same arguments: skipped
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        write_demo(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "utils.demo", str(tmp_path / "cli"),
                          "--n-train", "12", "--n-test", "4", "--n-genes", "20",
                          "--image-size", "32"], capture_output=True, text=True, check=True)
    assert "demo set in" in out.stdout
    assert len(pd.read_csv(tmp_path / "cli" / "train.csv")) == 12


def test_a_model_that_sees_the_image_beats_the_mean_profile(learnable):
    """Colour features → ridge, trained on two slices and scored on the held-out third."""
    from skimage.color import rgb2hed
    from sklearn.linear_model import Ridge

    data = load_data(learnable)
    images = np.asarray(load_images(data, "train"), dtype=np.float64) / 255
    hed = np.stack([rgb2hed(im) for im in images])
    quantiles = np.percentile(hed, [10, 50, 90], axis=(1, 2)).transpose(1, 0, 2)
    dark, white = (images.mean(-1) < 0.5).mean((1, 2)), (images.min(-1) > 0.85).mean((1, 2))
    feats = np.concatenate([images.mean((1, 2)), hed.mean((1, 2)), hed.std((1, 2)),
                            quantiles.reshape(len(images), -1), dark[:, None], white[:, None]],
                           axis=1)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
    folds = make_folds("blocks", len(images), 3)
    model, mean_profile = np.zeros_like(data.y), np.zeros_like(data.y)
    for k in range(3):
        train, held = folds != k, folds == k
        model[held] = Ridge(alpha=10.0).fit(feats[train], data.y[train]).predict(feats[held])
        mean_profile[held] = data.y[train].mean(axis=0)
    fold_scores = [(score(data.y[folds == k], model[folds == k]),
                    score(data.y[folds == k], mean_profile[folds == k])) for k in range(3)]
    for seen, mean in fold_scores:  # every held-out slice
        assert seen["score"] > mean["score"] + 0.15, (seen, mean)
        assert seen["hvg50"] > 0.1 and mean["hvg50"] == 0.0
    assert np.mean([seen["hvg50"] for seen, _ in fold_scores]) > 0.25
