"""Run folders: save/load round trip, completeness, shape checks, the runs table."""

import numpy as np
import pytest

from utils.cv import score_folds
from utils.runs import (
    check_shapes,
    find_runs,
    is_complete,
    load_run,
    runs_table,
    save_run,
)


def _save(folder, seed=0, n=20, g=6, n_test=4):
    rng = np.random.default_rng(seed)
    y, oof = rng.random((n, g)), rng.random((n, g))
    folds = np.arange(n) * 2 // n
    cv = score_folds(y, oof, folds, "blocks")
    return save_run(folder, {"recipe": "ridge", "backbone": "m"}, folds, oof,
                    rng.random((n_test, g)), cv)


def test_round_trip(tmp_path):
    folder = _save(tmp_path / "a")
    run = load_run(folder)
    assert run.name == "a" and run.config["recipe"] == "ridge"
    assert run.oof.shape == (20, 6) and run.test_pred.shape == (4, 6)
    assert run.cv["splitter"] == "blocks" and set(run.cv) >= {"folds", "overall", "oof"}
    assert not list(folder.glob(".*tmp*"))


def test_incomplete_run_is_named(tmp_path):
    folder = _save(tmp_path / "a")
    (folder / "test_pred.npy").unlink()
    assert not is_complete(folder)
    with pytest.raises(FileNotFoundError, match="test_pred.npy"):
        load_run(folder)


def test_find_runs_lists_only_finished_runs(tmp_path):
    _save(tmp_path / "r1")
    _save(tmp_path / "deep" / "r2")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    assert [p.name for p in find_runs(tmp_path)] == ["r2", "r1"]


def test_check_shapes_names_the_run(tmp_path):
    run = load_run(_save(tmp_path / "a"))
    check_shapes([run], 20, 4, 6)
    with pytest.raises(ValueError, match="test_pred.npy.*a"):
        check_shapes([run], 20, 5, 6)


def test_runs_table(tmp_path):
    runs = [load_run(_save(tmp_path / f"r{i}", seed=i)) for i in range(2)]
    table = runs_table(runs)
    assert list(table.index) == ["r0", "r1"]
    assert {"splitter", "score", "cells", "max_gene", "heg50", "hvg50", "oof_score"} <= set(table)
