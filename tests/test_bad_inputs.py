"""Issue 15's table of bad inputs: each one gets an error naming the file, row or column, or a
documented conversion with one warning that counts the files it applied to."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import GENES, SIZE, make_dacon, write_png

from utils.config import SubmitConfig
from utils.data import DataError, ImageConversionWarning, load_data, load_images
from utils.submit import (
    ConstantColumnsWarning,
    SubmissionError,
    audit_flags,
    audit_predictions,
    make_submission,
    write_submission,
)


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        call(*args, **kwargs)
    return str(err.value)


def _one_warning(call, *args, **kwargs):
    """The result of `call` and the message of the single ImageConversionWarning it gave."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = call(*args, **kwargs)
    record = [w for w in record if issubclass(w.category, ImageConversionWarning)]
    assert len(record) == 1, [str(w.message) for w in record]
    return out, str(record[0].message)


def test_wrong_size_first_patch_is_the_one_blamed(tmp_path):
    root = make_dacon(tmp_path)
    write_png(root / "train" / "TRAIN_0000.png", np.zeros((20, 20, 3)))
    msg = _error(load_images, load_data(root), "train", cache_dir=tmp_path / "c")
    assert "TRAIN_0000.png is 20x20" in msg and "TRAIN_0001" not in msg
    assert "1 of 12 patches" in msg and "expected 16x16" in msg and "11 of the 12" in msg


def test_test_patches_of_another_size_are_resized_with_one_warning(tmp_path):
    root = make_dacon(tmp_path / "a")
    other = make_dacon(tmp_path / "b", size=(24, 24))
    for i in range(5):
        name = f"test/TEST_{i:04d}.png"
        (root / name).write_bytes((other / name).read_bytes())
    data = load_data(root)
    test, msg = _one_warning(load_images, data, "test", cache_dir=tmp_path / "c")
    assert test.shape == (5, *SIZE, 3) and "5 of 5 patches" in msg and "resized" in msg
    from PIL import Image

    first = Image.open(other / "test/TEST_0000.png").resize(SIZE[::-1], Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(test[0], np.asarray(first))
    assert load_images(data, "train", cache_dir=tmp_path / "c").shape == (12, *SIZE, 3)
    with pytest.raises(DataError, match="expected 16x16"):  # an explicit size is a must
        load_images(data, "test", cache_dir=tmp_path / "c", size=SIZE)


def test_nan_in_path_cell_names_file_line_and_id(tmp_path):
    root = make_dacon(tmp_path)
    test = pd.read_csv(root / "test.csv")
    test.loc[3, "path"] = np.nan
    test.to_csv(root / "test.csv", index=False)
    msg = _error(load_data, root)
    assert msg.startswith("test.csv:") and "'path'" in msg and "TEST_0003" in msg
    assert "CSV lines [5]" in msg


def test_empty_test_and_sample_name_the_file(tmp_path):
    root = make_dacon(tmp_path)
    (root / "test.csv").write_text("ID,path\n")
    (root / "sample_submission.csv").write_text("ID," + ",".join(GENES) + "\n")
    msg = _error(load_data, root)
    assert "test.csv" in msg and "no data rows" in msg


def test_rgba_fully_transparent_is_an_error_and_with_content_composited(tmp_path):
    root = make_dacon(tmp_path)
    rgba = np.random.default_rng(0).integers(0, 256, (*SIZE, 4))
    rgba[..., 3] = 0
    write_png(root / "train" / "TRAIN_0004.png", rgba)
    msg = _error(load_images, load_data(root), "train", cache_dir=tmp_path / "c")
    assert "TRAIN_0004.png" in msg and "fully transparent" in msg
    rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent: white
    write_png(root / "train" / "TRAIN_0004.png", rgba)
    images, msg = _one_warning(load_images, load_data(root), "train", cache_dir=tmp_path / "c")
    assert "1 of 12 patches" in msg and "alpha" in msg
    np.testing.assert_array_equal(images[4, :8], rgba[:8, :, :3])
    assert (images[4, 8:] == 255).all()


def test_16_bit_greyscale_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    root = make_dacon(tmp_path)
    grey = np.random.default_rng(0).integers(0, 65536, SIZE).astype(np.uint16)
    Image.fromarray(grey).save(root / "train" / "TRAIN_0002.png")
    assert Image.open(root / "train" / "TRAIN_0002.png").mode.startswith("I")
    images, msg = _one_warning(load_images, load_data(root), "train", cache_dir=tmp_path / "c")
    expected = np.rint(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(images[2], np.repeat(expected[..., None], 3, axis=2))
    assert "1 of 12 patches" in msg and "16-bit" in msg


def test_greyscale_replicated_with_one_warning_counting_files(tmp_path):
    root = make_dacon(tmp_path)
    grey = np.random.default_rng(0).integers(0, 256, SIZE)
    for name in ("TRAIN_0001", "TRAIN_0007", "TRAIN_0009"):
        write_png(root / "train" / f"{name}.png", grey)
    data = load_data(root)
    images, msg = _one_warning(load_images, data, "train", cache_dir=tmp_path / "c")
    assert "3 of 12 patches" in msg and "3 greyscale" in msg
    np.testing.assert_array_equal(images[7], np.repeat(grey[..., None], 3, axis=2))
    _, again = _one_warning(load_images, data, "train", cache_dir=tmp_path / "c")  # cached
    assert again == msg


@pytest.mark.parametrize("name", ["train.csv", "sample_submission.csv"])
def test_duplicated_gene_header_is_refused(tmp_path, name):
    root = make_dacon(tmp_path)
    lines = (root / name).read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("G3", "G1")
    (root / name).write_text("".join(lines))
    msg = _error(load_data, root)
    assert msg.startswith(str(root / name)) and "'G1'" in msg and "more than once" in msg
    assert ("columns [2, 4]" if name == "train.csv" else "columns [1, 3]") in msg


def test_gene_constant_in_train_is_written_warned_audited_and_strict_refuses(tmp_path):
    root = make_dacon(tmp_path)
    train = pd.read_csv(root / "train.csv")
    train["G2"] = 1.5
    train.to_csv(root / "train.csv", index=False)
    data = load_data(root)
    assert SubmitConfig().strict is False
    assert [f.name for f in dataclasses.fields(SubmitConfig)].count("strict") == 1
    rng = np.random.default_rng(0)
    oof, test = rng.normal(size=data.y.shape), rng.normal(size=(len(data.test), 4))
    oof[:, 1], test[:, 1] = 1.5, 1.5  # what ridge predicts for a constant target
    flags = audit_flags(audit_predictions(data.y, oof, test, data.genes))
    assert flags["constant_predictions"] == ["G2"] and flags["constant_in_train"] == ["G2"]
    frame = make_submission(test, data.test["ID"].tolist(), data.sample)
    with pytest.raises(SubmissionError, match="'G2'"):
        write_submission(frame, data.sample, tmp_path / "strict.csv", strict=True)
    assert not (tmp_path / "strict.csv").exists()
    with pytest.warns(ConstantColumnsWarning, match=r"1 of 4 gene columns .*'G2'.*r = 0"):
        path = write_submission(frame, data.sample, tmp_path / "sub.csv")
    assert (pd.read_csv(path)["G2"] == 1.5).all()
