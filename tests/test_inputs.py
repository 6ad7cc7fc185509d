"""Issue 25: inputs are never outputs. SUBMISSION, RUN_DIR and the caches may not resolve to an
input file or folder of the data (sample_submission.csv, train.csv, the data folder, train/ or
test/), also through a symlink; the message names the parameter, and the input is untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_dacon

from utils import train
from utils.config import TrainConfig
from utils.data import load_data, load_images
from utils.files import InputOutputError, check_output, run_dir, write_csv


@pytest.fixture
def data(tmp_path):
    return load_data(make_dacon(tmp_path))


def _submission(data) -> pd.DataFrame:
    from utils.submit import make_submission

    pred = np.random.default_rng(0).normal(size=(len(data.test), len(data.genes)))
    return make_submission(pred, data.test["ID"].tolist(), data.sample)


def test_submission_over_sample_submission_is_refused(data, tmp_path):
    from utils.submit import write_submission

    before = (data.root / "sample_submission.csv").read_bytes()
    (tmp_path / "link.csv").symlink_to(data.root / "sample_submission.csv")
    for path in (data.root / "sample_submission.csv", tmp_path / "link.csv",
                 data.root / "train.csv", data.root / "train" / "mine.csv"):
        with pytest.raises(InputOutputError, match="never writes over its inputs") as err:
            write_submission(_submission(data), data.sample, path)
        assert "data" in str(err.value)
    assert (data.root / "sample_submission.csv").read_bytes() == before
    assert not (data.root / "train" / "mine.csv").exists()
    write_submission(_submission(data), data.sample, tmp_path / "submission.csv")  # elsewhere: ok


def test_run_dir_in_the_data_is_refused_before_training(data, tmp_path):
    for folder in (data.root, data.root / "train", data.root / "test" / "runs"):
        with pytest.raises(InputOutputError, match=r"RUN_DIR=.*resolves to") as err:
            run_dir(folder)
        assert str(data.root) in str(err.value)
        cfg = TrainConfig(data_dir=str(data.root), run_dir=str(folder), recipe="ridge",
                          backbone="test_convnext", pretrained=False, img_size=32, cv="blocks",
                          n_folds=2)
        with pytest.raises(InputOutputError, match="RUN_DIR"):
            train.train(cfg, data, np.arange(12) % 2)
    assert sorted(p.name for p in data.root.iterdir()) == ["sample_submission.csv", "test",
                                                           "test.csv", "train", "train.csv"]
    assert run_dir(data.root / "runs" / "a").is_dir()  # a new folder inside the data folder: ok


def test_caches_in_the_data_are_refused(data, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(data.root))
    with pytest.raises(InputOutputError, match=r"\$KIT_CACHE_DIR="):
        load_images(data, "train")
    monkeypatch.setenv("KIT_CACHE_DIR", str(data.root / "train"))
    with pytest.raises(InputOutputError, match="image folder"):
        load_images(data, "train")
    monkeypatch.delenv("KIT_CACHE_DIR")
    with pytest.raises(InputOutputError, match="cache_dir="):
        load_images(data, "train", cache_dir=data.root / "test")
    assert sorted(p.name for p in (data.root / "train").iterdir())[:1] == ["TRAIN_0000.png"]
    assert len(list((data.root / "train").iterdir())) == 12


def test_every_kit_writer_refuses_an_input(data):
    with pytest.raises(InputOutputError, match="train.csv"):
        write_csv(data.root / "train.csv", pd.DataFrame({"a": [1]}))
    assert check_output(data.root.parent / "elsewhere", "RUN_DIR").name == "elsewhere"
