"""Data-parallel fine-tuning (DEVICES > 1): two gloo processes on CPU, launched by Accelerate's
notebook launcher as on Kaggle's two GPUs, train as one process with the same global batch."""

from dataclasses import replace

import numpy as np
import pytest

from utils import loop, train
from utils.config import TrainConfig
from utils.data import load_data
from utils.files import read_json


@pytest.fixture
def tiny(dacon_dir, tmp_path):
    """Fine-tuning on the tiny DACON folder (12 train rows, 2 folds): batches of two, two
    batches per step, the default loss (its Pearson and covariance terms are batch-level)."""
    cfg = TrainConfig(data_dir=str(dacon_dir), run_dir=str(tmp_path / "one"), recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=32, n_folds=2,
                      epochs=2, batch_size=2, accumulate=2, patience=None, ema=0.9, tta=False,
                      alphas=(1.0, 100.0), cv="blocks", augment="none", devices=1)
    data = load_data(cfg.data_dir)
    return cfg, data, train.make_cv_folds(cfg, data)[0]


def test_two_processes_train_as_one_with_the_same_global_batch(tiny, tmp_path):
    cfg, data, folds = tiny
    one = train.train(cfg, data, folds)
    two = train.train(replace(cfg, run_dir=str(tmp_path / "two"), devices=2), data, folds)
    np.testing.assert_allclose(two.oof, one.oof, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two.test_pred, one.test_pred, rtol=1e-4, atol=1e-5)
    histories = [read_json(run.path / "history.json") for run in (one, two)]
    assert [len(h) for h in histories] == [2 * 3, 2 * 3]  # 2 folds × epochs 0, 1, 2
    for a, b in zip(*histories):
        assert (a["unit"], a["epoch"]) == (b["unit"], b["epoch"])
        for key in ("loss", "pearson", "covariance", "val_score"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["unit"], key)
    # the 2-process run counted the global batch's images, and wrote every unit's files once
    assert {row["unit"] for row in histories[1]} == {"fold0", "fold1"}
    assert not list((two.path / "checkpoints").rglob("last.pt"))


def test_a_global_batch_that_does_not_split_evenly_is_refused(tiny, tmp_path):
    cfg, data, folds = tiny
    cfg = replace(cfg, run_dir=str(tmp_path / "odd"), devices=2, batch_size=3)
    with pytest.raises(ValueError, match="BATCH_SIZE=3 must be a multiple of DEVICES=2"):
        train.train(cfg, data, folds)


def test_devices_must_be_a_positive_count(tiny):
    cfg, _, _ = tiny
    with pytest.raises(ValueError, match="DEVICES must be a positive integer"):
        replace(cfg, devices=0)


def test_one_visible_device_means_one_process(tiny):
    cfg, _, _ = tiny
    assert loop.device_count(replace(cfg, devices=None).devices) == 1  # CPU: no GPUs to use
    assert loop.world() == (0, 1)


@pytest.mark.slow
def test_data_parallel_on_the_demo_set_matches_one_process(tmp_path, capsys):
    """The demo-scale run the kit's data-parallel path was measured with (240 train patches,
    test_efficientnet at 64 px, global batch 16, 2 epochs × 3 folds): DEVICES=2 ends where one
    process does. On CPU the two are gloo processes sharing the cores (no speed-up expected);
    on two or more GPUs the printed images/s is the scaling."""
    from utils.dev.demo import write_demo

    data_dir = write_demo(tmp_path / "data", n_train=240, n_test=80, n_genes=400,
                          image_size=128)
    cfg = TrainConfig(data_dir=str(data_dir), recipe="finetune", backbone="test_efficientnet",
                      pretrained=False, img_size=64, epochs=2, batch_size=16, patience=None,
                      tta=False, augment="none", cv="blocks", n_folds=3, overwrite=True,
                      resume=False)
    data = load_data(cfg.data_dir)
    folds, _ = train.make_cv_folds(cfg, data)
    runs = {devices: train.train(replace(cfg, run_dir=str(tmp_path / f"devices{devices}"),
                                         devices=devices), data, folds) for devices in (1, 2)}
    speeds = {d: np.mean([r["images_per_s"] for r in read_json(run.path / "history.json")
                          if "images_per_s" in r]) for d, run in runs.items()}
    with capsys.disabled():
        print(f"\ndata parallel, demo set: images/s {speeds}")
    np.testing.assert_allclose(runs[2].oof, runs[1].oof, rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(runs[2].test_pred, runs[1].test_pred, rtol=1e-4, atol=5e-5)
    assert abs(runs[2].cv["overall"]["score"] - runs[1].cv["overall"]["score"]) < 1e-5
