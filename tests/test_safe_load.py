"""Issue 25: run folders never execute code when loaded. Checkpoints are read with
`torch.load(weights_only=True)` and run arrays without pickles; a planted malicious pickle (its
`__reduce__` would create a marker file) is refused with a message naming the file, and the
marker is never created."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from conftest import make_dacon

from utils import train
from utils.config import TrainConfig
from utils.cv import score_folds
from utils.data import load_data
from utils.runs import UnsafeFileError, load_run, load_state, save_run, save_state


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_the_payload_would_run_code_if_unpickled(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker)))  # what torch.load(weights_only=False) would do
    assert marker.read_text() == "pwned"


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "last.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "rng": Payload(marker)}, path)
    with pytest.raises(UnsafeFileError) as err:
        load_state(path)
    msg = str(err.value)
    assert str(path) in msg and "could run code" in msg and "RESUME=False" in msg, msg
    assert not marker.exists()
    with open(tmp_path / "raw.pt", "wb") as f:  # a bare pickle, not torch's zip format
        pickle.dump(Payload(marker), f, protocol=2)
    with pytest.raises(UnsafeFileError):
        load_state(tmp_path / "raw.pt")
    assert not marker.exists()


def test_training_state_round_trips_through_the_safe_format(tmp_path):
    random.seed(1)
    np.random.seed(2)
    state = {"rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                     "torch": torch.get_rng_state()},
             "history": [{"loss": np.float64(0.5), "epoch": np.int64(1), "note": None}],
             "model": {"w": torch.arange(3.0)}, "epoch": 1}
    save_state(tmp_path / "last.pt", state)
    back = load_state(tmp_path / "last.pt")
    assert back["rng"]["python"] == state["rng"]["python"]
    np.random.set_state(back["rng"]["numpy"])
    expected = np.random.get_state()[1]
    np.testing.assert_array_equal(expected, state["rng"]["numpy"][1])
    assert back["history"] == [{"loss": 0.5, "epoch": 1, "note": None}]
    assert torch.equal(back["model"]["w"], torch.arange(3.0)) and back["epoch"] == 1


def test_a_planted_checkpoint_stops_a_resumed_fine_tuning_run(tmp_path):
    root = make_dacon(tmp_path)
    cfg = TrainConfig(data_dir=str(root), run_dir=str(tmp_path / "run"), recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=32, n_folds=2,
                      epochs=1, batch_size=4, patience=None, tta=False, cv="blocks",
                      alphas=(1.0,))
    data = load_data(root)
    folds = np.arange(12) * 2 // 12
    marker = tmp_path / "marker"
    train.prepare_checkpoints(cfg.run_dir, train.checkpoint_settings(cfg, data), resume=True)
    (tmp_path / "run" / "checkpoints" / "fold0").mkdir()
    torch.save({"model": {}, "epoch": 1, "x": Payload(marker)},
               tmp_path / "run" / "checkpoints" / "fold0" / "last.pt")
    with pytest.raises(UnsafeFileError, match="fold0/last.pt"):
        train.train(cfg, data, folds)
    assert not marker.exists()


def test_a_run_array_holding_a_pickle_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    y, oof, folds = rng.random((10, 2)), rng.random((10, 2)), np.arange(10) % 2
    folder = save_run(tmp_path / "run", {"recipe": "ridge"}, folds, oof, rng.random((3, 2)),
                      score_folds(y, oof, folds, "blocks"))
    marker = tmp_path / "marker"
    bad = np.empty(1, dtype=object)
    bad[0] = Payload(marker)
    np.save(folder / "oof.npy", bad, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"oof.npy holds pickled Python objects"):
        load_run(folder)
    assert not marker.exists()
