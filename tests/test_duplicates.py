"""Issue 25: the duplicate audit finds planted exact and near copies (re-stained, noisy,
flipped) within train and between train and test, with counts and example pairs, and the CV
splitters keep train duplicates in one fold."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_dacon, write_png
from PIL import Image

from utils import duplicates, eda, train
from utils.config import TrainConfig
from utils.cv import keep_together, make_folds, split_rows
from utils.data import load_data


def _png(root, name) -> np.ndarray:
    return np.asarray(Image.open(root / name).convert("RGB")).astype(int)


@pytest.fixture
def planted(tmp_path):
    """20 train and 6 test random patches with copies planted: train 2 = train 17 (exact),
    train 14 = train 4 brighter (near), test 2 = train 5 (exact), test 4 = train 7 flipped
    with noise (near)."""
    root = make_dacon(tmp_path, n_train=20, n_test=6)
    rng = np.random.default_rng(1)
    write_png(root / "train/TRAIN_0017.png", _png(root, "train/TRAIN_0002.png"))
    write_png(root / "train/TRAIN_0014.png", np.clip(_png(root, "train/TRAIN_0004.png") + 3, 0,
                                                     255))
    write_png(root / "test/TEST_0002.png", _png(root, "train/TRAIN_0005.png"))
    noisy = _png(root, "train/TRAIN_0007.png")[:, ::-1] + rng.normal(0, 2, (16, 16, 3))
    write_png(root / "test/TEST_0004.png", np.clip(noisy, 0, 255))
    return root


def test_planted_copies_are_found_with_their_kind(planted):
    audit = duplicates.find_duplicates(load_data(planted))
    found = {(p.where, p.kind, p.id_a, p.id_b) for p in audit.pairs.itertuples()}
    assert found == {("train–train", "exact", "TRAIN_0002", "TRAIN_0017"),
                     ("train–train", "near", "TRAIN_0004", "TRAIN_0014"),
                     ("train–test", "exact", "TRAIN_0005", "TEST_0002"),
                     ("train–test", "near", "TRAIN_0007", "TEST_0004")}
    counts = audit.counts().set_index(["where", "kind"])
    assert counts.loc[("train–train", "exact"), "train_patches"] == 2
    assert counts.loc[("train–test", "near"), "test_patches"] == 1
    line = audit.summary()
    assert "within train 1 exact, 1 near pairs; train–test 1 exact, 1 near" in line, line
    assert "2 groups of train duplicates" in line
    groups = audit.train_groups()
    assert groups[2] == groups[17] >= 0 and groups[4] == groups[14] >= 0 and groups[2] != groups[4]
    assert (np.delete(groups, [2, 17, 4, 14]) == -1).all()


def test_unrelated_patches_are_not_duplicates(tmp_path):
    audit = duplicates.find_duplicates(load_data(make_dacon(tmp_path, n_train=30, n_test=10)))
    assert audit.pairs.empty and (audit.train_groups() == -1).all()
    assert audit.summary().endswith("train–test 0 exact, 0 near pairs")


def test_hashes_of_a_flipped_or_turned_patch_are_a_permutation_of_the_originals():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    d = duplicates.dct_matrix(32)
    np.testing.assert_allclose(d @ d.T, np.eye(32), atol=1e-12)
    base = duplicates.dihedral_hashes(image)[0]
    assert len(set(base.tolist())) == 8
    for view in (image[:, ::-1], image[:, :, ::-1], np.rot90(image, 1, axes=(1, 2)),
                 image.transpose(0, 2, 1, 3)):
        assert set(duplicates.dihedral_hashes(np.ascontiguousarray(view))[0]) == set(base)


def test_grey_grid_is_the_mean_of_each_cell_divisible_or_not():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    expected = image.astype(float).mean(axis=3).reshape(2, 32, 2, 32, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(duplicates.grey_grid(image, 32), expected)
    odd = image[:, :40, :40]  # 40 px over 32 cells: cells of 1 or 2 pixels
    rows = np.linspace(0, 40, 33).astype(int)
    grey = odd.astype(float).mean(axis=3)
    direct = [[grey[:, rows[i]:rows[i + 1], rows[j]:rows[j + 1]].mean(axis=(1, 2))
               for j in range(32)] for i in range(32)]
    np.testing.assert_allclose(duplicates.grey_grid(odd, 32), np.moveaxis(direct, 2, 0))


def test_keep_together_moves_each_group_into_its_majority_fold():
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    labels = np.array([5, 5, -1, 5, -1, 7, 7, -1, -1])
    np.testing.assert_array_equal(keep_together(folds, labels), [0, 0, 0, 0, 1, 1, 1, 2, 2])
    blocks = make_folds("blocks", 9, 3, same_fold=labels)
    np.testing.assert_array_equal(blocks, [0, 0, 0, 0, 1, 1, 1, 2, 2])
    y = np.random.default_rng(0).random((9, 3))
    folds, _, note = split_rows("random", y, 3, 0, same_fold=labels)
    assert folds[0] == folds[1] == folds[3] and folds[5] == folds[6]
    assert "2 groups of duplicate rows (5 rows) kept in one fold each" in note


def test_05_folds_keep_train_duplicates_together_and_say_so(planted, tmp_path, capsys):
    cfg = TrainConfig(data_dir=str(planted), run_dir=str(tmp_path / "run"), cv="blocks",
                      n_folds=4)
    folds, splitter = train.make_cv_folds(cfg, load_data(planted))
    assert splitter == "blocks" and folds[2] == folds[17] and folds[4] == folds[14]
    out = capsys.readouterr().out
    assert "duplicate patches" in out and "within train 1 exact, 1 near pairs" in out
    assert "kept in one fold each" in out


def test_plot_shows_example_pairs_or_says_there_are_none(planted, tmp_path):
    import matplotlib.pyplot as plt

    from utils.data import load_images

    data = load_data(planted)
    audit = duplicates.find_duplicates(data)
    fig = eda.plot_duplicate_pairs(load_images(data, "train"), load_images(data, "test"),
                                   audit.pairs, n=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and titles[0].startswith("exact, 0 bits")
    plt.close(fig)
    fig = eda.plot_duplicate_pairs(load_images(data, "train"), load_images(data, "test"),
                                   audit.pairs.iloc[:0])
    assert fig.axes[0].texts[0].get_text() == "no duplicate patches found"
    plt.close(fig)
