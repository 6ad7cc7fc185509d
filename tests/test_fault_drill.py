"""The fault drill (tests/fault_drill.py) kills a fresh process at each stage (image cache
build, feature extraction, a fine-tuning epoch, writing test_pred.npy, writing the CSV), reruns
it, and every rerun ends identical to an uninterrupted run; two processes building one cache
share one build. Slow (a minute or more): CI runs it, `-m "not slow"` skips it."""

from __future__ import annotations

import fault_drill as drill
import pytest


@pytest.mark.slow
def test_every_killed_stage_reruns_to_identical_outputs(tmp_path):
    rows = drill.run_drill(tmp_path, n_train=48, n_test=16, img=64)
    table = drill.format_table(rows)
    print(table)
    faults = [row["fault"] for row in rows]
    assert faults == [f"SIGKILL during {name}" for name in drill.STAGES] + [
        "two processes build one cache"], table
    assert all(row["identical"] == "yes" for row in rows), table
    assert all(row["killed"] == "SIGKILL" for row in rows[:-1]), table
    by = {name: row for name, row in zip(drill.STAGES, rows)}
    # a killed OVERWRITE keeps the earlier run finished (the new one is made in .next/)
    assert "run finished: YES" in by["writing test_pred.npy"]["on disk after"], table
    assert "temporary file(s)" in by["writing test_pred.npy"]["on disk after"], table
    assert "CSV: the earlier one" in by["writing the CSV"]["on disk after"], table
    assert by["feature extraction"]["rerun did"] == ("extracted 1 split(s), loaded 1 from the "
                                                     "cache"), table
    assert "decoded 0 patches" in rows[-1]["rerun did"], table  # one built it, one waited
