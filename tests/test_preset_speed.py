"""Issue 26: `benchmarks/preset_speed.py` keeps working. Its `--tiny` path (test_efficientnet at
64 px, a few demo patches, a small ridge and retrieval) runs every CPU preset through the same
functions as the DACON-scale run, eager and compiled; nothing is timed against a threshold."""

from __future__ import annotations

import importlib.util

from conftest import KIT_ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("preset_speed",
                                                  KIT_ROOT / "benchmarks" / "preset_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_has_a_row_per_preset(capsys):
    bench = _bench()
    rows = bench.main(["--tiny", "--n-images", "6", "--batch-size", "4"])
    assert [row["preset"] for row in rows] == list(bench.PRESETS)
    # every stage's pooled map (test_efficientnet: 440 channels) for the patch and its centre
    assert {row["width"] for row in rows} == {880}
    views = {row["preset"]: row["views x crops"] for row in rows}
    assert views.pop("cpu_fast") == "4x2" and set(views.values()) == {"8x2"}  # TTA flips: 4
    assert all(row["ratio"] > 0 and row["total min"] > 0 for row in rows)
    # the kit's DACON-scale mode: compiled extraction (COMPILE "auto" on CPU), its compile counted
    assert all(row["compiled img/s"] > 0 and row["compile s"] > 0 for row in rows)
    out = capsys.readouterr().out
    assert "| cpu_best | test_efficientnet@64 |" in out
    assert "cpu_best end to end" in out


def test_ridge_speed_tiny_run_compares_both_routes():
    from benchmarks import ridge_speed

    rows = ridge_speed.main(["--tiny", "--k", "4"])
    assert [row["rows"] for row in rows] == [120, 80, 40]
    assert all(row["speed-up"] > 0 and row["max rel. diff"] < 1e-6 for row in rows)
