"""Issue 25: every failed write names its path and what to do, and leaves nothing half-written
where the next run would take it for finished: a read-only folder, a folder that cannot be
created and a full disk, for the image cache, cached arrays (features), run files, checkpoints
and the submission CSV. The faults are planted (see tests/plant.py: as root, chmod does not
stop writes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_dacon
from plant import failing_open, full_disk, read_only, read_only_modes

import utils.data
from utils.cv import score_folds
from utils.data import load_data, load_images
from utils.files import WriteError, cached_array, run_dir, write_json
from utils.runs import is_complete, load_run, load_state, save_run, save_state


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def _save_run(folder, seed=0):
    rng = np.random.default_rng(seed)
    y, oof = rng.random((20, 3)), rng.random((20, 3))
    folds = np.arange(20) * 2 // 20
    return save_run(folder, {"recipe": "ridge", "seed": seed}, folds, oof, rng.random((4, 3)),
                    score_folds(y, oof, folds, "blocks"))


def _frames():
    genes = ["G1", "G2"]
    sample = pd.DataFrame(0.0, index=range(6), columns=genes)
    sample.insert(0, "ID", [f"TEST_{i}" for i in range(6)])
    frame = sample.copy()
    frame[genes] = np.random.default_rng(0).normal(size=(6, 2))
    return frame, sample


def _says_read_only(err, path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "read-only" in msg and "writable folder" in msg, msg


def _says_full(err, path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "disk is full" in msg and "free some space" in msg, msg


# --- a read-only folder -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", read_only_modes())
def test_read_only_cache_folder_is_named_and_nothing_is_built(tmp_path, mode):
    data = load_data(make_dacon(tmp_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    with read_only(cache, mode), pytest.raises(WriteError) as err:
        load_images(data, "train", cache_dir=cache)
    _says_read_only(err, cache)
    assert list(cache.iterdir()) == []
    assert load_images(data, "train", cache_dir=cache).shape[0] == 12  # writable again: works


@pytest.mark.parametrize("mode", read_only_modes())
def test_read_only_run_folder_submission_and_checkpoint(tmp_path, mode):
    folder = tmp_path / "run"
    folder.mkdir()
    frame, sample = _frames()
    from utils.submit import write_submission

    with read_only(folder, mode):
        with pytest.raises(WriteError) as err:
            _save_run(folder)
        _says_read_only(err, folder / "folds.npy")
        with pytest.raises(WriteError) as err:
            write_submission(frame, sample, folder / "submission.csv")
        _says_read_only(err, folder / "submission.csv")
        with pytest.raises(WriteError) as err:
            save_state(folder / "last.pt", {"epoch": 1})
        _says_read_only(err, folder / "last.pt")
    assert list(folder.iterdir()) == []


def test_read_only_parent_of_a_new_run_folder(tmp_path):
    with read_only(tmp_path / "ro"), pytest.raises(WriteError) as err:
        run_dir(tmp_path / "ro" / "runs" / "a")
    assert str(tmp_path / "ro" / "runs" / "a") in str(err.value)
    assert not (tmp_path / "ro" / "runs").exists()


# --- a folder that does not exist and cannot be created ---------------------------------------

def test_missing_folders_are_created_and_uncreatable_ones_named(tmp_path):
    from utils.submit import write_submission

    frame, sample = _frames()
    path = write_submission(frame, sample, tmp_path / "new" / "deeper" / "sub.csv")
    assert path.is_file()  # a missing folder is made, as a competitor expects
    (tmp_path / "a_file").write_text("not a folder")
    for call, target in ((lambda p: write_submission(frame, sample, p), "sub.csv"),
                         (lambda p: _save_run(p.parent), "folds.npy"),
                         (lambda p: run_dir(p), "run")):
        bad = tmp_path / "a_file" / "sub" / target
        with pytest.raises(WriteError) as err:
            call(bad)
        msg = str(err.value)
        assert str(tmp_path / "a_file" / "sub") in msg and "cannot be created" in msg, msg
    assert (tmp_path / "a_file").read_text() == "not a folder"


# --- a full disk ------------------------------------------------------------------------------

def test_full_disk_while_building_the_image_cache(tmp_path, monkeypatch):
    data = load_data(make_dacon(tmp_path, n_train=30))
    reference = np.array(load_images(data, "train", cache_dir=tmp_path / "ref"))
    cache = tmp_path / "cache"
    # (the cache build first removes stale temporaries, so a /dev/full link would go: patch)
    for room in (0, 10_000):  # full from the start, then full after 10 kB (a partial file)
        monkeypatch.setattr(utils.data, "open", failing_open(room), raising=False)
        with pytest.raises(WriteError) as err:
            load_images(data, "train", cache_dir=cache)
        _says_full(err, cache / "train_images.npy")
        assert sorted(p.name for p in cache.iterdir()) == ["train_images.npy.lock"]
    monkeypatch.undo()
    np.testing.assert_array_equal(load_images(data, "train", cache_dir=cache), reference)


def test_full_disk_while_caching_features_leaves_no_key(tmp_path, monkeypatch):
    import utils.files

    path = tmp_path / "features" / "x_train.npy"
    cached_array(path, {"k": 1}, lambda: np.zeros(800))
    monkeypatch.setattr(utils.files, "open", failing_open(1000), raising=False)
    with pytest.raises(WriteError) as err:
        cached_array(path, {"k": 2}, lambda: np.ones(800))
    monkeypatch.undo()
    _says_full(err, path)
    assert not path.with_suffix(".json").exists() and leftovers(tmp_path) == []
    calls = []
    out = cached_array(path, {"k": 1}, lambda: calls.append(1) or np.zeros(800))
    assert calls == [1] and (out == 0).all()  # the old key was never left on other data


def test_full_disk_while_rewriting_a_run_leaves_no_finished_run(tmp_path):
    folder = _save_run(tmp_path / "run", seed=0)
    assert is_complete(folder)
    full_disk(folder / "test_pred.npy")
    with pytest.raises(WriteError) as err:
        _save_run(folder, seed=1)
    _says_full(err, folder / "test_pred.npy")
    # folds and oof are the new run's, test_pred the old one's: without config.json the folder
    # is not a finished run, so nothing takes the mixture for one
    assert not is_complete(folder) and leftovers(folder) == []
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(folder)
    _save_run(folder, seed=1)
    assert load_run(folder).config["seed"] == 1


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    import torch

    path = tmp_path / "last.pt"
    save_state(path, {"epoch": 1, "w": torch.ones(3)})
    full_disk(path)
    with pytest.raises(WriteError) as err:
        save_state(path, {"epoch": 2, "w": torch.zeros(1000)})
    _says_full(err, path)
    state = load_state(path)
    assert state["epoch"] == 1 and state["w"].tolist() == [1, 1, 1] and leftovers(tmp_path) == []


def test_full_disk_while_writing_the_submission_keeps_the_old_one(tmp_path):
    from utils.submit import write_submission

    frame, sample = _frames()
    sub = tmp_path / "submission.csv"
    sub.write_text("an older submission\n")
    full_disk(sub)
    with pytest.raises(WriteError) as err:
        write_submission(frame, sample, sub)
    _says_full(err, sub)
    assert sub.read_text() == "an older submission\n" and leftovers(tmp_path) == []


def test_other_os_errors_are_not_disguised(tmp_path):
    def broken(_):
        raise ConnectionResetError("not about writing")

    from utils.files import write_with

    with pytest.raises(ConnectionResetError):
        write_with(tmp_path / "x.json", broken)
    write_json(tmp_path / "x.json", {})
