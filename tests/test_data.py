"""utils.data: validation of the DACON files, the image cache and the torch dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import GENES, SIZE, write_png

import utils.data as data_mod
from utils.data import DataError, PatchDataset, cache_dir_for, load_data, load_images


def edit_csv(root: Path, name: str, edit) -> None:
    """Read a CSV as text-ID frame, let `edit` change it (in place or returned), write it back."""
    frame = pd.read_csv(root / name, dtype={"ID": str, "path": str})
    out = edit(frame)
    frame = frame if out is None else out
    frame.to_csv(root / name, index=False)


def decode_all(root: Path, frame: pd.DataFrame) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in frame["path"]])


def error_of(root: Path) -> str:
    with pytest.raises(DataError) as err:
        load_data(root)
    return str(err.value)


# --- load_data -------------------------------------------------------------------------------

def test_load_data_happy_path(dacon_dir):
    data = load_data(dacon_dir)
    train = pd.read_csv(dacon_dir / "train.csv")
    assert data.root == dacon_dir
    assert data.genes == list(GENES)
    assert data.y.dtype == np.float32 and data.y.shape == (12, len(GENES))
    np.testing.assert_array_equal(data.y, train[list(GENES)].to_numpy(np.float32))
    assert list(data.train.columns) == ["ID", "path"] and list(data.test.columns) == ["ID", "path"]
    assert data.train["ID"].tolist() == [f"TRAIN_{i:04d}" for i in range(12)]
    assert data.test["path"].tolist() == [f"./test/TEST_{i:04d}.png" for i in range(5)]
    assert list(data.sample.columns) == ["ID", *GENES]
    assert data.image_paths("test")[0] == dacon_dir / "./test/TEST_0000.png"
    assert all(p.is_file() for p in data.image_paths("train"))
    with pytest.raises(ValueError, match="split"):
        data.image_paths("val")


def test_missing_gene_column(dacon_dir):
    edit_csv(dacon_dir, "train.csv", lambda f: f.drop(columns="G2"))
    msg = error_of(dacon_dir)
    assert "train.csv" in msg and "sample_submission.csv" in msg and "'G2'" in msg


def test_extra_gene_column(dacon_dir):
    edit_csv(dacon_dir, "train.csv", lambda f: f.assign(G9=1.0))
    msg = error_of(dacon_dir)
    assert "train.csv" in msg and "'G9'" in msg and "1 only in train.csv" in msg


def test_same_genes_different_order(dacon_dir):
    edit_csv(dacon_dir, "sample_submission.csv", lambda f: f[["ID", "G1", "G3", "G2", "MT-CO1"]])
    msg = error_of(dacon_dir)
    assert "different order" in msg and "gene column 1" in msg
    assert "train.csv has 'G2'" in msg and "sample_submission.csv has 'G3'" in msg


@pytest.mark.parametrize("name,dup", [("train.csv", "TRAIN_0004"), ("test.csv", "TEST_0001"),
                                      ("sample_submission.csv", "TEST_0001")])
def test_duplicated_ids(dacon_dir, name, dup):
    def duplicate(frame):
        frame.loc[frame.index[frame["ID"] == dup][0] + 1, "ID"] = dup
    edit_csv(dacon_dir, name, duplicate)
    msg = error_of(dacon_dir)
    assert msg.startswith(f"{name}:") and "duplicated" in msg and dup in msg


def test_test_and_sample_ids_differ(dacon_dir):
    def rename(frame):
        frame.loc[4, "ID"] = "TEST_9999"
    edit_csv(dacon_dir, "sample_submission.csv", rename)
    msg = error_of(dacon_dir)
    assert "test.csv" in msg and "sample_submission.csv" in msg
    assert "TEST_0004" in msg and "TEST_9999" in msg


@pytest.mark.parametrize("split,image", [("train", "TRAIN_0003"), ("test", "TEST_0002")])
def test_missing_image_file(dacon_dir, split, image):
    (dacon_dir / split / f"{image}.png").unlink()
    msg = error_of(dacon_dir)
    assert msg.startswith(f"{split}.csv:") and f"./{split}/{image}.png" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_targets(dacon_dir, bad):
    def spoil(frame):
        frame.loc[2, "G2"] = bad
        frame.loc[7, "MT-CO1"] = bad
    edit_csv(dacon_dir, "train.csv", spoil)
    msg = error_of(dacon_dir)
    assert "train.csv" in msg and "TRAIN_0002" in msg and "TRAIN_0007" in msg
    assert "'G2'" in msg and "'MT-CO1'" in msg and "'G1'" not in msg and "TRAIN_0003" not in msg


def test_non_numeric_target_column(dacon_dir):
    def spoil(frame):
        frame["G3"] = frame["G3"].astype(object)
        frame.loc[4, "G3"] = "n/a?"
    edit_csv(dacon_dir, "train.csv", spoil)
    msg = error_of(dacon_dir)
    assert "train.csv" in msg and "non-numeric" in msg and "'G3'" in msg and "'G1'" not in msg


@pytest.mark.parametrize("name,columns", [
    ("train.csv", lambda f: f[["path", "ID", *GENES]]),
    ("test.csv", lambda f: f.rename(columns={"path": "image"})),
    ("sample_submission.csv", lambda f: f.rename(columns={"ID": "id"})),
])
def test_wrong_first_columns(dacon_dir, name, columns):
    edit_csv(dacon_dir, name, columns)
    msg = error_of(dacon_dir)
    assert msg.startswith(f"{name}:") and "first columns" in msg


def test_empty_csv(dacon_dir):
    (dacon_dir / "test.csv").write_text("")
    assert "test.csv" in error_of(dacon_dir)


# --- load_images -----------------------------------------------------------------------------

@pytest.fixture
def data(dacon_dir):
    return load_data(dacon_dir)


def test_load_images_is_read_only_memmap_equal_to_pngs(data, tmp_path):
    images = load_images(data, "train", cache_dir=tmp_path / "cache", size=SIZE)
    assert isinstance(images, np.memmap) and not images.flags.writeable
    assert images.shape == (12, *SIZE, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, decode_all(data.root, data.train))
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 1
    test = load_images(data, "test", cache_dir=tmp_path / "cache", size=SIZE)
    np.testing.assert_array_equal(test, decode_all(data.root, data.test))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "test_images.json", "test_images.npy", "test_images.npy.lock",
        "train_images.json", "train_images.npy", "train_images.npy.lock"]


def test_default_cache_folder_is_cache_dir_for(data):
    load_images(data, "test", size=SIZE)
    assert (cache_dir_for(data) / "test_images.npy").is_file()


def test_size_none_takes_first_image_size(data, tmp_path):
    assert load_images(data, "test", cache_dir=tmp_path, size=None).shape == (5, *SIZE, 3)


def test_second_call_does_not_decode(data, tmp_path, monkeypatch):
    first = np.array(load_images(data, "train", cache_dir=tmp_path, size=SIZE))

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(data_mod, "decode_image", boom)
    monkeypatch.setattr(data_mod, "_image_size", boom)
    np.testing.assert_array_equal(load_images(data, "train", cache_dir=tmp_path, size=SIZE), first)


def test_cache_rebuilt_after_image_changes(data, tmp_path):
    before = np.array(load_images(data, "train", cache_dir=tmp_path, size=SIZE))
    path = data.root / "train" / "TRAIN_0000.png"
    new = np.full((*SIZE, 3), 7, dtype=np.uint8)
    stat = path.stat()
    write_png(path, new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # no timer-tick flakiness
    after = load_images(data, "train", cache_dir=tmp_path, size=SIZE)
    np.testing.assert_array_equal(after[0], new)
    np.testing.assert_array_equal(after[1:], before[1:])


def test_cache_rebuilt_for_another_size(data, tmp_path):
    load_images(data, "test", cache_dir=tmp_path, size=SIZE)
    with pytest.raises(DataError, match="expected 8x8"):
        load_images(data, "test", cache_dir=tmp_path, size=(8, 8))


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders if f.exists() for p in f.rglob("*")
            if p.suffix == ".npy" or ".tmp" in p.name]


def test_undecodable_image_names_file_and_leaves_no_cache(data, tmp_path):
    bad = data.root / "train" / "TRAIN_0005.png"
    bad.write_bytes(b"this is not a png" * 10)
    with pytest.raises(DataError) as err:
        load_images(data, "train", cache_dir=tmp_path / "cache", size=SIZE)
    assert str(bad) in str(err.value) and "cannot decode" in str(err.value)
    assert _leftovers(tmp_path / "cache", data.root) == []
    assert not (tmp_path / "cache" / "train_images.json").exists()


def test_wrong_size_image_names_file_and_both_sizes(data, tmp_path):
    bad = data.root / "test" / "TEST_0003.png"
    write_png(bad, np.zeros((12, 20, 3)))
    with pytest.raises(DataError) as err:
        load_images(data, "test", cache_dir=tmp_path / "cache", size=SIZE)
    msg = str(err.value)
    assert str(bad) in msg and "20x12" in msg and "16x16" in msg
    assert _leftovers(tmp_path / "cache", data.root) == []


def test_rgba_and_greyscale_become_rgb(data, tmp_path):
    rng = np.random.default_rng(1)
    rgba, grey = rng.integers(0, 256, (*SIZE, 4)), rng.integers(0, 256, SIZE)
    write_png(data.root / "train" / "TRAIN_0001.png", rgba)
    write_png(data.root / "train" / "TRAIN_0002.png", grey)
    with pytest.warns(data_mod.ImageConversionWarning, match="2 of 12 patches"):
        images = load_images(data, "train", cache_dir=tmp_path, size=SIZE)
    alpha = rgba[..., 3:] / 255
    np.testing.assert_array_equal(images[1], np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)))
    np.testing.assert_array_equal(images[2], np.repeat(grey[..., None], 3, axis=2))


def test_cache_goes_to_the_kit_never_into_the_data_folder(data, tmp_path, monkeypatch):
    monkeypatch.delenv(data_mod.CACHE_ENV_VAR, raising=False)
    monkeypatch.setattr(data_mod, "kit_root", lambda: tmp_path / "kit")
    folder = cache_dir_for(data)
    assert folder.parent == tmp_path / "kit" / "cache"
    assert folder.name.startswith(f"{data.root.name}-") and folder == cache_dir_for(data)
    images = load_images(data, "test", size=SIZE)
    assert (folder / "test_images.npy").is_file() and len(images) == 5
    assert not (data.root / "cache").exists()


def test_cache_dir_env_var(data, tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert cache_dir_for(data).parent == tmp_path / "elsewhere"


# --- PatchDataset ----------------------------------------------------------------------------

def test_patch_dataset_with_dataloader(data, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    images = load_images(data, "train", cache_dir=tmp_path, size=SIZE)
    rows = np.array([3, 1, 7])
    ds = PatchDataset(images, data.y.astype(np.float64), indices=rows)
    assert len(ds) == 3
    x, y = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert x.dtype == torch.uint8 and x.shape == (2, 3, *SIZE)
    assert y.dtype == torch.float32 and y.shape == (2, len(GENES))
    np.testing.assert_array_equal(x.numpy(), images[rows[:2]].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y.numpy(), data.y[rows[:2]])


def test_patch_dataset_transform_and_no_targets(data, tmp_path):
    import albumentations as A
    import torch

    images = load_images(data, "test", cache_dir=tmp_path, size=SIZE)
    ds = PatchDataset(images, transform=A.HorizontalFlip(p=1))
    assert len(ds) == 5
    item = ds[2]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.uint8
    np.testing.assert_array_equal(item.numpy(), images[2][:, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(images[2], decode_all(data.root, data.test)[2])  # untouched
    batch = next(iter(torch.utils.data.DataLoader(PatchDataset(images), batch_size=5)))
    assert isinstance(batch, torch.Tensor) and batch.shape == (5, 3, *SIZE)


# --- issue 25: targets float32 cannot hold, warnings on every call ---------------------------

def test_targets_beyond_float32_are_refused_never_inf(dacon_dir):
    def huge(frame):
        frame.loc[3, "G2"] = 1e39

    edit_csv(dacon_dir, "train.csv", huge)
    with pytest.raises(DataError) as err:
        load_data(dacon_dir)
    msg = str(err.value)
    assert "beyond float32's range" in msg and "TRAIN_0003" in msg and "'G2'" in msg, msg
    assert "1e+39" in msg and "inf" in msg


def test_targets_float32_would_round_stay_float64_with_a_warning(dacon_dir):
    offset = 1e8  # float32 steps by 8 here: the spread of ~1 would be rounded away
    edit_csv(dacon_dir, "train.csv", lambda f: f.assign(G3=f["G3"] + offset))
    with pytest.warns(data_mod.DataWarning, match=r"1 gene columns.*\['G3'\].*float64"):
        data = load_data(dacon_dir)
    raw = pd.read_csv(dacon_dir / "train.csv")["G3"].to_numpy()
    assert data.y.dtype == np.float64 and np.array_equal(data.y[:, 2], raw)
    assert np.unique(raw.astype(np.float32)).size < np.unique(raw).size  # float32 would lose


def test_ordinary_targets_are_float32_without_a_warning(dacon_dir):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_data(dacon_dir).y.dtype == np.float32


def test_conversion_warning_repeats_on_every_read_under_default_filters(data, tmp_path):
    import warnings

    write_png(data.root / "train" / "TRAIN_0001.png", np.zeros(SIZE))  # greyscale
    seen = []
    with warnings.catch_warnings(record=True) as record:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # Python's default action: once per location
        fresh = load_data(data.root)
        for _ in range(3):  # one line, three calls: the cache is built once, read twice
            load_images(fresh, "train", cache_dir=tmp_path / "c")
            seen.append(len([w for w in record if w.category is data_mod.ImageConversionWarning]))
    assert seen == [1, 2, 3] and "1 greyscale" in str(record[-1].message)
    assert record[-1].filename == __file__  # attributed to the caller's line
