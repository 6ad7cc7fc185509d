"""The held-out harness on the demo set (four slices as sections): one results row per (run,
section) with every metric part, a 07 run blending the same rotation's members, and row
subsets that slice the full data's caches instead of recomputing them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import KIT_ROOT

from benchmarks import heldout
from utils.config import FeatureSpec
from utils.data import load_data, load_images, rows_of
from utils.features import cached_features
from utils.metric import score
from utils.runs import load_run

TINY = KIT_ROOT / "benchmarks" / "configs" / "demo_tiny.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo set with four slices (`demo_slices.csv`: ID → slice)."""
    from utils.dev.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("heldout") / "data", n_train=96, n_test=16,
                      n_genes=60, n_train_slices=4, image_size=64, seed=2)


def test_a_row_subset_reads_the_full_datas_features_and_images(demo):
    data = load_data(demo)
    spec = FeatureSpec("test_convnext", False, 64, tta=False)
    full = cached_features(data, spec, splits=("train",))
    part = rows_of(data, np.arange(20, 96), np.arange(0, 20), "train", "first rows held out")
    x = cached_features(part, spec)
    np.testing.assert_array_equal(x["train"], full["train"][20:])
    np.testing.assert_array_equal(x["test"], full["train"][:20])
    np.testing.assert_array_equal(load_images(part, "test"), load_images(data, "train")[:20])
    assert list(part.test["ID"]) == list(data.train["ID"][:20])
    np.testing.assert_array_equal(part.y, data.y[20:])
    with pytest.raises(ValueError, match="non-empty subset"):
        rows_of(data, np.arange(0), np.arange(3))


def test_tiny_config_writes_a_row_per_section_with_every_part(demo, tmp_path):
    results = tmp_path / "heldout.csv"
    table = heldout.main([str(TINY), "--data", str(demo), "--out", str(tmp_path / "runs"),
                          "--results", str(results)])
    rows = pd.read_csv(results)
    assert len(rows) == len(table) == 4
    assert list(rows["section"]) == [f"slice_{i}" for i in range(1, 5)]
    assert set(rows["config"]) == {"demo_tiny"} and set(rows["run"]) == {"tiny ridge"}
    for column in ("score", "cells", "max_gene", "heg50", "hvg50", "cv_score", "cv_min",
                   "cv_max", "seconds", "peak_rss_gb", "cpu", "cores", "python", "torch",
                   "timm", "kit_commit", "date"):
        assert rows[column].notna().all(), column
    assert (rows["cv_min"] <= rows["cv_score"]).all() and (rows["cv_score"] <= rows["cv_max"]).all()
    assert rows["choice"].str.startswith("alpha=").all()  # chosen by CV on the other slices
    # the held-out score is the metric on that slice's truth and the run's test predictions
    data, slices = load_data(demo), pd.read_csv(demo / "demo_slices.csv")["slice"].to_numpy()
    run = load_run(tmp_path / "runs" / "demo_tiny" / "slice_2" / "tiny_ridge")
    expected = score(data.y[slices == "slice_2"], run.test_pred)
    assert rows.loc[1, "score"] == pytest.approx(expected["score"], abs=1e-5)
    assert run.config["n_train"] == int((slices != "slice_2").sum())
    assert run.cv["n_folds"] == 3  # one fold per training slice


def test_a_07_run_blends_the_members_of_its_rotation_and_grids_expand(demo, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "sections": "demo_slices.csv",
        "set": {"BACKBONE": "test_convnext", "PRETRAINED": False, "IMG_SIZE": 64, "TTA": False},
        "runs": [{"name": "ridge", "set": {"RUN_DIR": "runs/r"}, "grid": {"TARGET_PCA": [4, 8]}},
                 {"name": "near", "set": {"RUN_DIR": "runs/n", "RECIPE": "retrieval"}},
                 {"name": "blend", "preset": "ensemble",
                  "members": ["ridge TARGET_PCA=4", "near"]}]}))
    results = tmp_path / "rows.csv"
    heldout.main([str(config), "--data", str(demo), "--out", str(tmp_path / "runs"),
                  "--results", str(results), "--held", "slice_3", "all", "--only", "blend"])
    rows = pd.read_csv(results)
    assert list(rows["run"]) == ["blend", "blend"] and list(rows["section"]) == ["slice_3", "all"]
    assert rows["choice"].str.startswith("kept ").all()
    assert rows.loc[1, ["score", "cells"]].isna().all()  # nothing held out: CV only
    members = sorted(p.name for p in (tmp_path / "runs" / "bench" / "slice_3").iterdir()
                     if p.is_dir())
    assert members == ["near", "ridge_TARGET_PCA=4"]  # the grid's other point was not needed


def test_bad_configs_and_sections_are_refused_by_name(demo, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"runs": [{"name": "e", "preset": "cpu_ensemble"}]}))
    with pytest.raises(ValueError, match="RUNS .* must be RUN_DIRs"):
        heldout.read_config(config)
    config.write_text(yaml.safe_dump({"runs": [{"name": "a"}], "folds": 3}))
    with pytest.raises(ValueError, match="unknown keys \\['folds'\\]"):
        heldout.read_config(config)
    with pytest.raises(SystemExit, match="no such section"):
        heldout.main([str(TINY), "--data", str(demo), "--held", "slice_9",
                      "--results", str(tmp_path / "r.csv")])
    pd.DataFrame({"ID": ["x"], "section": ["a"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match="no section for 96 train IDs"):
        heldout.read_sections(load_data(demo), tmp_path / "s.csv")
