"""The speed harness's path on its tiny config (test_efficientnet at 64 px, a few demo patches,
small ridge shapes): every preset's extraction eager and compiled against the pure forward,
fits, predictions and ridge's SVD both ways become rows of a results CSV; nothing is timed
against a threshold."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import KIT_ROOT

from benchmarks import speed

TINY = KIT_ROOT / "benchmarks" / "configs" / "tiny_speed.yaml"


def test_tiny_config_writes_a_row_per_preset_stage_and_mode(tmp_path):
    results = tmp_path / "speed.csv"
    speed.main([str(TINY), "--results", str(results)])
    rows = pd.read_csv(results)
    assert set(rows["config"]) == {"tiny_speed"} and set(rows["source"]) == {"benchmarks.speed"}
    extraction = rows[rows["stage"] == "extraction"]
    sampled = extraction[extraction["mode"] != "measured"]
    assert sorted(set(zip(sampled["item"], sampled["mode"]))) == [
        (p, m) for p in ("cpu_best", "cpu_fast", "cpu_lite0", "cpu_retrieval")
        for m in ("compiled", "eager")]
    assert (extraction["ratio_to_forward"] > 0).all() and (extraction["per_s"] > 0).all()
    # every stage's pooled map (test_efficientnet: 440 channels) for the patch and its centre
    assert sampled["detail"].str.contains("width 880|width 1760").all()
    passes = sampled.set_index(["item", "mode"])["detail"].str.extract(r"(\d+) passes")[0]
    assert passes[("cpu_fast", "eager")] == "8" and passes[("cpu_best", "eager")] == "16"
    assert passes[("cpu_lite0", "eager")] == "24"  # 8 views x (patch, centre, 2 x 2 tiles)
    compiled = sampled[sampled["mode"] == "compiled"]
    assert compiled["detail"].str.contains("compile").all()
    stages = set(zip(rows["item"], rows["stage"]))
    assert {("cpu_best", "ridge fit"), ("cpu_retrieval", "retrieval fit"),
            ("cpu_best", "end to end"), ("cpu_best", "predict")} <= stages
    measured = rows[rows["mode"] == "measured"].set_index("stage")
    assert list(measured.index) == ["decode patches", "extraction", "fit + predict", "end to end"]
    assert (measured["size"] == 96 + 32).all() and (measured["seconds"] > 0).all()
    assert measured.loc["extraction", "ratio_to_forward"] > 0
    assert measured.loc["end to end", "seconds"] == pytest.approx(
        measured["seconds"].iloc[:3].sum())
    svd = rows[rows["stage"] == "features' SVD"]
    assert sorted(svd["size"].unique()) == [40, 80, 120] and set(svd["mode"]) == {"lapack", "gram"}
    diffs = svd["detail"].dropna().str.extract(r"diff (\S+)")[0].astype(float)
    assert (diffs < 1e-6).all()
    assert rows["cpu"].notna().all() and rows["date"].notna().all()


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("presets: [cpu_best]\nimages: 3\n")
    with pytest.raises(ValueError, match="unknown keys \\['images'\\]"):
        speed.read_config(path)
