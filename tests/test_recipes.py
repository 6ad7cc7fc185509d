"""Recipes end to end on a tiny DACON folder: run folder written, reused, refused, retrained."""

from dataclasses import replace

import numpy as np
import pytest

from utils import train
from utils.config import TrainConfig
from utils.data import load_data


@pytest.fixture
def cfg(dacon_dir, tmp_path):
    return TrainConfig(data_dir=str(dacon_dir), run_dir=str(tmp_path / "run"),
                       backbone="test_convnext", pretrained=False, img_size=32, n_folds=3,
                       tta=False, alphas=(1.0, 100.0), cv="blocks")


def test_ridge_recipe_writes_a_run_folder(cfg):
    data = load_data(cfg.data_dir)
    folds, _ = train.make_cv_folds(cfg, data)
    run = train.train(cfg, data, folds)
    assert run.oof.shape == data.y.shape
    assert run.test_pred.shape == (len(data.test), len(data.genes))
    assert np.array_equal(run.folds, folds)
    assert run.cv["splitter"] == "blocks" and len(run.cv["folds"]) == 3
    assert run.config["recipe"] == "ridge" and run.config["details"]["tta"] is False  # TTA=False
    assert run.config["n_genes"] == len(data.genes) and run.config["elapsed_s"] >= 0


def test_finished_run_is_reused_changed_one_refused(cfg, monkeypatch):
    data = load_data(cfg.data_dir)
    folds, _ = train.make_cv_folds(cfg, data)
    first = train.train(cfg, data, folds)
    monkeypatch.setitem(train.RECIPES, "ridge", lambda *a: 1 / 0)
    again = train.train(cfg, data, folds)
    np.testing.assert_array_equal(first.test_pred, again.test_pred)
    changed = replace(cfg, alphas=(5.0,))
    with pytest.raises(FileExistsError, match="ALPHAS: "):
        train.train(changed, data, folds)
    with pytest.raises(ZeroDivisionError):  # OVERWRITE retrains
        train.train(replace(cfg, overwrite=True), data, folds)
