"""The synthetic demo set: DACON layout, gene names, determinism, H&E-like images, safe writing,
and an image signal that a model can learn under slice-held-out CV."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import utils.dev.demo as demo
from utils.data import load_data, load_images
from utils.dev.demo import label_families, make_gene_names, make_stains, write_demo
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


def _dark_pixel_hue(images: np.ndarray) -> np.ndarray:
    """Unit mean optical-density direction of the darkest (nuclear) pixels: the haematoxylin."""
    od = -np.log((images.reshape(-1, 3) + 1.0) / 256)
    v = od[od.sum(1) > 2.0].mean(0)
    return v / np.linalg.norm(v)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b, -1, 1))))


def test_layout_is_dacon(small):
    train = pd.read_csv(small / "train.csv")
    test = pd.read_csv(small / "test.csv")
    sample = pd.read_csv(small / "sample_submission.csv")
    truth = pd.read_csv(small / "demo_test_truth.csv")
    assert list(train.columns[:2]) == ["ID", "path"] and len(train.columns) == 202
    assert train["ID"].iloc[0] == "TRAIN_0000" and train["path"].iloc[0] == "./train/TRAIN_0000.png"
    assert list(test.columns) == ["ID", "path"] and list(sample["ID"]) == list(test["ID"])
    assert list(sample.columns[1:]) == list(train.columns[2:]) == list(truth.columns[1:])
    assert list(truth["ID"]) == list(test["ID"]) and (sample.iloc[:, 1:] == 0).all().all()
    assert list(pd.read_csv(small / "demo_slices.csv")["ID"]) == list(train["ID"])
    for frame in (train, test):
        for rel in frame["path"].iloc[[0, -1]]:
            assert rel.startswith("./")
            with Image.open(small / rel) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
    load_data(small)  # passes every check of the kit


def test_gene_names_look_like_the_real_list():
    names = make_gene_names(3467)
    assert len(names) == len(set(names)) == 3467
    assert sum(n.startswith("MT-") for n in names) == 13
    assert sum(n.startswith(("RPL", "RPS")) for n in names) > 50
    assert any(n.startswith("LINC") for n in names) and any(n.startswith("ZNF") for n in names)
    clones = [n for n in names if n[:2] in ("AC", "AL") and "." in n]
    assert len(clones) > 100 and all(n.rsplit(".", 1)[1].isdigit() for n in clones)
    assert {"ALB", "APOA1", "CYP3A4", "GLUL"} <= set(names)
    assert make_gene_names(3467) == names and make_gene_names(3467, seed=1) != names


@pytest.mark.parametrize("n", [1, 7, 20, 59])
def test_few_gene_names_still_mix_families(n):
    names = make_gene_names(n)
    assert len(names) == len(set(names)) == n
    assert len(set(label_families(names))) >= min(n, 7)


def test_deterministic_for_a_seed(small, tmp_path):
    again = write_demo(tmp_path / "again", **SMALL, workers=1)  # thread count does not matter
    for name in ("train.csv", "demo_test_truth.csv", "train/TRAIN_0003.png", "test/TEST_0011.png"):
        assert (again / name).read_bytes() == (small / name).read_bytes()
    other = write_demo(tmp_path / "other", **{**SMALL, "seed": 5})
    assert (other / "train.csv").read_bytes() != (small / "train.csv").read_bytes()
    assert (other / "train/TRAIN_0003.png").read_bytes() != (small / "train/TRAIN_0003.png"
                                                             ).read_bytes()


def test_targets_are_realistic(small):
    y = load_data(small).y
    assert np.isfinite(y).all() and (np.ptp(y, axis=0) > 0).all()
    truth = pd.read_csv(small / "demo_test_truth.csv").iloc[:, 1:].to_numpy()
    assert np.isfinite(truth).all() and (np.ptp(truth, axis=0) > 0).all()
    assert -0.1 <= y.min() < 0 and (y < 0).mean() < 0.3  # tiny negatives, as after batch correction
    means = y.mean(axis=0)
    assert means.max() > 2 and means.max() / max(means.min(), 1e-6) > 100  # orders of magnitude


def test_families_are_partly_coherent(tmp_path):
    data = load_data(write_demo(tmp_path / "d", n_train=120, n_test=20, n_genes=1000,
                                image_size=16))
    genes = np.array(data.genes)

    def within(mask: np.ndarray) -> float:
        corr = np.corrcoef(data.y[:, mask].T)
        return corr[np.triu_indices(mask.sum(), 1)].mean()

    others = np.isin(np.arange(len(genes)), np.random.default_rng(0).choice(len(genes), 30))
    mt = np.char.startswith(genes, "MT-")
    ribo = np.char.startswith(genes, "RPL") | np.char.startswith(genes, "RPS")
    assert within(mt) > 0.3 and within(ribo) > max(0.1, 2 * within(others))


def test_images_look_like_h_and_e(small):
    from skimage.color import rgb2hed

    data = load_data(small)
    images = np.asarray(load_images(data, "train"), dtype=np.float64)
    mean_rgb = images.mean(axis=(0, 1, 2))
    assert mean_rgb[0] > mean_rgb[1] and mean_rgb[2] > mean_rgb[1]  # pink/purple, not green
    assert (images.min(-1) > 235).mean() > 0.01  # some white fat/lumen
    hematoxylin = np.array([rgb2hed(im / 255)[..., 0].mean() for im in images])
    assert hematoxylin.std() > 0.1 * abs(hematoxylin.mean())  # nuclei vary between spots
    corr = [abs(np.corrcoef(hematoxylin, g)[0, 1]) for g in data.y.T]
    assert np.nanmax(corr) > 0.4  # and some genes follow them


def test_test_slice_has_a_mild_stain_shift(small):
    stains = make_stains(4, seed=0)  # 3 train slices + the test slice
    train_h = stains[:3, 0]
    between_train = max(_angle(a, b) for a in train_h for b in train_h)
    to_test = min(_angle(stains[3, 0], h) for h in train_h)
    assert between_train < to_test < 15  # shifted, but still haematoxylin
    data = load_data(small)  # the shift shows in the pixels, beyond slice-to-slice variation
    train, test = (np.asarray(load_images(data, s), np.float64) for s in ("train", "test"))
    slices = pd.read_csv(small / "demo_slices.csv")["slice"].to_numpy()
    hues = [_dark_pixel_hue(train[slices == s]) for s in np.unique(slices)]
    test_hue = _dark_pixel_hue(test)
    between_train = max(_angle(a, b) for a in hues for b in hues)
    assert min(_angle(test_hue, h) for h in hues) > 2 * between_train


def test_rows_are_stored_slice_by_slice_in_spatial_order(small):
    slices = pd.read_csv(small / "demo_slices.csv")["slice"].tolist()
    assert slices == sorted(slices) and len(set(slices)) == 3
    assert pd.Series(slices).value_counts().tolist() == [30, 30, 30]
    y = load_data(small).y
    neighbours = np.abs(np.diff(y, axis=0)).mean()
    shuffled = np.abs(y - y[np.random.default_rng(0).permutation(len(y))]).mean()
    assert neighbours < 0.9 * shuffled  # contiguous rows are spatial neighbours


def test_skip_when_complete_refuse_foreign_folder(small, tmp_path):
    stamp = (small / "train.csv").stat().st_mtime_ns
    write_demo(small, **SMALL)
    assert (small / "train.csv").stat().st_mtime_ns == stamp  # same arguments: skipped
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="mine"):
            write_demo(foreign, **SMALL, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_other_arguments_need_overwrite(tmp_path):
    args = dict(n_train=6, n_test=3, n_genes=12, image_size=16)
    out = write_demo(tmp_path / "d", **args)
    with pytest.raises(FileExistsError, match="other arguments"):
        write_demo(out, **{**args, "seed": 1})
    write_demo(out, **{**args, "seed": 1}, overwrite=True)
    assert '"seed": 1' in (out / demo.PARAMS_FILE).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left


def test_interrupted_run_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_tables", fail)
    with pytest.raises(KeyboardInterrupt):
        write_demo(tmp_path / "d", n_train=6, n_test=3, n_genes=12, image_size=16)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path):
    cmd = [sys.executable, "-m", "utils.dev.demo", str(tmp_path / "cli"), "--n-train", "12",
           "--n-test", "4", "--n-genes", "20", "--image-size", "32"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "demo set in" in out and "12 train" in out and " s" in out
    assert len(pd.read_csv(tmp_path / "cli" / "train.csv")) == 12
    again = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "skipped" in again


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
    slices = pd.read_csv(learnable / "demo_slices.csv")["slice"].to_numpy()
    model, mean_profile = np.zeros_like(data.y), np.zeros_like(data.y)
    for held in (slices == s for s in np.unique(slices)):
        fit = Ridge(alpha=10.0).fit(feats[~held], data.y[~held])
        model[held], mean_profile[held] = fit.predict(feats[held]), data.y[~held].mean(axis=0)
    fold_scores = [(score(data.y[held], model[held]), score(data.y[held], mean_profile[held]))
                   for held in (slices == s for s in np.unique(slices))]
    for seen, mean in fold_scores:  # every held-out slice
        assert seen["score"] > mean["score"] + 0.15, (seen, mean)
        assert seen["hvg50"] > 0.1 and mean["hvg50"] == 0.0
    assert np.mean([seen["hvg50"] for seen, _ in fold_scores]) > 0.25
