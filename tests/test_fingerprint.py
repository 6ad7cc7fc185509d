"""Issue 25: runs and caches know their data. The fingerprint says what changed (rows, genes,
targets, images); 05 refuses a stale run and retrains with OVERWRITE=True, resumes no
checkpoint of other data, and rebuilds caches; 06 and 07 refuse runs of other data, naming
them."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import make_dacon, write_png

from utils import train
from utils.config import TrainConfig, to_dict
from utils.cv import score_folds
from utils.data import describe_change, load_data, load_images
from utils.runs import (
    check_same_data,
    check_trained_on,
    load_run,
    prepare_checkpoints,
    reuse_run,
    save_run,
)


def _edit_train(root, edit) -> None:
    """Rewrite train.csv (and sample_submission.csv's gene columns) through `edit(frame)`."""
    frame = pd.read_csv(root / "train.csv", dtype={"ID": str, "path": str})
    frame = edit(frame)
    frame.to_csv(root / "train.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv", dtype={"ID": str})
    sample.columns = ["ID", *frame.columns[2:]]
    sample.to_csv(root / "sample_submission.csv", index=False)


CHANGES = {
    "rows": (lambda f: f.iloc[:-2], ["train rows", "target values", "train image", "12 → 10"]),
    "gene renamed": (lambda f: f.rename(columns={"G2": "G2B"}), ["genes (names or order)"]),
    "genes reordered": (lambda f: f[["ID", "path", "G2", "G1", "G3", "MT-CO1"]],
                        ["genes (names or order)", "target values"]),
    "targets rescaled": (lambda f: f.assign(G1=f["G1"] * 2), ["train target values"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_fingerprint_says_what_changed(tmp_path, change):
    root = make_dacon(tmp_path)
    before = load_data(root).fingerprint
    assert load_data(root).fingerprint == before  # stable
    edit, says = CHANGES[change]
    _edit_train(root, edit)
    message = describe_change(before, load_data(root).fingerprint)
    assert all(word in message for word in says), message
    assert "test" not in message, message


def test_images_are_hashed_by_content_not_by_time(tmp_path):
    root = make_dacon(tmp_path / "a")
    before = load_data(root).fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # new modification times, same bytes
    assert load_data(copy).fingerprint == before
    write_png(copy / "test" / "TEST_0003.png", np.zeros((16, 16, 3)))
    assert describe_change(before, load_data(copy).fingerprint) == "changed: test image files"
    assert describe_change(None, before).startswith("it has no data fingerprint")


# --- 05: runs, checkpoints and caches --------------------------------------------------------

def _ridge(root, run, **overrides) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(root), "run_dir": str(run), "recipe": "ridge",
                          "backbone": "test_convnext", "pretrained": False, "img_size": 32,
                          "tta": False, "cv": "blocks", "n_folds": 3,
                          "alphas": (1.0, 100.0), **overrides})


def test_05_refuses_a_stale_run_and_retrains_with_overwrite(tmp_path, capsys):
    root = make_dacon(tmp_path, n_train=18, n_test=6)
    cfg = _ridge(root, tmp_path / "run")
    data = load_data(root)
    first = train.train(cfg, data, train.make_cv_folds(cfg, data)[0])
    assert first.config["data_fingerprint"] == data.fingerprint
    assert train.train(cfg, data, first.folds).cv == first.cv  # same data: reused
    _edit_train(root, lambda f: f.assign(G1=f["G1"] * 10))  # targets rescaled
    data = load_data(root)
    with pytest.raises(FileExistsError) as err:
        train.train(cfg, data, first.folds)
    msg = str(err.value)
    assert "other data (changed: train target values)" in msg and "OVERWRITE=True" in msg, msg
    assert load_run(cfg.run_dir).config["data_fingerprint"] == first.config["data_fingerprint"]
    again = train.train(_ridge(root, tmp_path / "run", overwrite=True), data, first.folds)
    assert again.config["data_fingerprint"] == data.fingerprint
    assert not np.allclose(again.oof, first.oof)


def test_a_run_without_a_fingerprint_is_not_reused(tmp_path):
    data = load_data(make_dacon(tmp_path))
    rng = np.random.default_rng(0)
    y, oof, folds = data.y, rng.random(data.y.shape), np.arange(12) % 2
    config = {"recipe": "ridge"}
    save_run(tmp_path / "old", config, folds, oof, rng.random((5, 4)),
             score_folds(y, oof, folds, "blocks"))
    with pytest.raises(FileExistsError, match="no data fingerprint"):
        reuse_run(tmp_path / "old", config, data)


def test_checkpoints_of_other_data_are_not_resumed(tmp_path):
    root = make_dacon(tmp_path)
    cfg = _ridge(root, tmp_path / "run", recipe="finetune")
    data = load_data(root)
    prepare_checkpoints(cfg.run_dir, train.checkpoint_settings(cfg, data), resume=True)
    prepare_checkpoints(cfg.run_dir, train.checkpoint_settings(cfg, data), resume=True)  # same
    _edit_train(root, lambda f: f.rename(columns={"G3": "G3X"}))
    new = train.checkpoint_settings(cfg, load_data(root))
    with pytest.raises(ValueError, match=r"other data \(changed: genes.*RESUME=False"):
        prepare_checkpoints(cfg.run_dir, new, resume=True)
    prepare_checkpoints(cfg.run_dir, new, resume=False)  # starting over is allowed


def test_caches_are_keyed_by_the_data_and_rebuilt_when_it_changes(tmp_path, capsys):
    from utils.config import FeatureSpec
    from utils.features import cache_entry

    root = make_dacon(tmp_path)
    data = load_data(root)
    _, key = cache_entry(data, "train", FeatureSpec("test_convnext", pretrained=False))
    assert key["images"]["content"] == data.fingerprint["train_images"]
    old = np.array(load_images(data, "train", cache_dir=tmp_path / "c"))
    write_png(root / "train" / "TRAIN_0004.png", np.full((16, 16, 3), 7))
    new = load_images(load_data(root), "train", cache_dir=tmp_path / "c")
    assert (new[4] == 7).all() and (new[5] == old[5]).all()


# --- 06 and 07: no run of other data ----------------------------------------------------------

def _fake_run(folder, data, seed=0):
    rng = np.random.default_rng(seed)
    oof, folds = rng.random(data.y.shape), np.arange(len(data.y)) % 3
    return save_run(folder, {"recipe": "ridge", "data_fingerprint": data.fingerprint}, folds, oof,
                    rng.random((len(data.test), len(data.genes))),
                    score_folds(data.y, oof, folds, "blocks"))


def test_06_refuses_a_run_trained_on_other_data(tmp_path):
    root = make_dacon(tmp_path)
    run = load_run(_fake_run(tmp_path / "run", load_data(root)))
    check_trained_on(run, load_data(root))
    write_png(root / "train" / "TRAIN_0000.png", np.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="run was trained on other data.*train image files"):
        check_trained_on(run, load_data(root), "explain")


def test_07_refuses_to_blend_runs_of_other_data_naming_them(tmp_path):
    a, b = make_dacon(tmp_path / "a"), make_dacon(tmp_path / "b")
    _edit_train(b, lambda f: f[["ID", "path", "G2", "G1", "G3", "MT-CO1"]])  # same shapes
    data_a, data_b = load_data(a), load_data(b)
    runs = [load_run(_fake_run(tmp_path / "runs" / "r1", data_a)),
            load_run(_fake_run(tmp_path / "runs" / "r2", data_b, seed=1)),
            load_run(_fake_run(tmp_path / "runs" / "r3", data_a, seed=2))]
    check_same_data([runs[0], runs[2]], data_a)
    with pytest.raises(ValueError) as err:
        check_same_data(runs, data_a)
    msg = str(err.value)
    assert "1 of 3 runs" in msg and "r2: changed: genes (names or order)" in msg, msg
    assert "trained on this data: r1, r3" in msg and "leave them out of RUNS" in msg
    (a / "test" / "TEST_0009.png").write_bytes((a / "test" / "TEST_0000.png").read_bytes())
    test = pd.read_csv(a / "test.csv", dtype=str)
    test.loc[0, ["ID", "path"]] = ["TEST_0009", "./test/TEST_0009.png"]
    test.to_csv(a / "test.csv", index=False)
    sample = pd.read_csv(a / "sample_submission.csv", dtype={"ID": str})
    sample.loc[0, "ID"] = "TEST_0009"
    sample.to_csv(a / "sample_submission.csv", index=False)
    with pytest.raises(ValueError, match="r1: changed: test rows"):
        check_same_data(runs[:1], load_data(a))


def test_the_config_records_every_parameter_and_the_data(tmp_path):
    root = make_dacon(tmp_path)
    cfg = _ridge(root, tmp_path / "run")
    settings = train.checkpoint_settings(cfg, load_data(root))
    assert settings["data"]["digest"] == load_data(root).fingerprint["digest"]
    assert set(to_dict(cfg)) - set(settings) <= set(train.NOT_TRAINING)
