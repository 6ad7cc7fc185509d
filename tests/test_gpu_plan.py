"""benchmarks/gpu_plan.py at CPU sizes (`--tiny`): every step of the quickstart's GPU plan runs
on a demo set cut into sections, is timed and scored on the held-out section (the score is the
metric on that run's own predictions), gpu_check's tiny table follows, exit code 0; a failing
step is a FAIL row and exit code 1; `--compare` prints an earlier run's scores beside; the cut
for a GPU machine keeps the chosen sections' spots and only the weights that fit."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import KIT_ROOT

from utils.data import load_data
from utils.metric import score
from utils.plans import GPU_PLAN, create_plan
from utils.runs import load_run

TINY = ["--tiny", "--device", "cpu"]
PLAN = create_plan(GPU_PLAN)
STEPS = (*PLAN.steps, PLAN.name)


@pytest.fixture
def gpu_plan(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    spec = importlib.util.spec_from_file_location("gpu_plan",
                                                  KIT_ROOT / "benchmarks" / "gpu_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_lines(out: str) -> dict[str, str]:
    """The plan table's line of each step (the line that starts with its name and a space)."""
    lines = [line.strip() for line in out.splitlines()]
    return {step: next((line for line in lines if line.startswith(step + " ")), None)
            for step in STEPS}


def test_tiny_plan_runs_every_step_scores_it_held_out_then_the_check_table(gpu_plan, tmp_path,
                                                                            capsys):
    results = tmp_path / "rows.csv"
    assert gpu_plan.main([*TINY, "--out", str(tmp_path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    lines = step_lines(out)
    assert all(lines.values()) and all(" ok " in f"{line} " for line in lines.values()), out
    assert "07 over 4 runs" in lines[PLAN.name] and "every step ok" in out
    assert "every check ok or skipped" in out and "hub ViT features" in out  # gpu_check's table
    rows = pd.read_csv(results)
    assert list(rows["step"]) == list(STEPS) and set(rows["device"]) == {"cpu"}
    assert np.isfinite(rows[["score", "cells", "max_gene", "heg50", "hvg50", "cv"]]).all().all()
    assert (rows["seconds"][:-1] > 0).all()
    assert rows["cut"].str.contains("train slice_1\\+slice_2 \\(48 spots\\), held slice_3 "
                                    "\\(24 spots\\)").all()
    # each score is the metric on that run's predictions for the held section, its own rows
    data = load_data(tmp_path / "demo")
    truth = data.y[pd.read_csv(tmp_path / "demo" / "demo_slices.csv")["slice"] == "slice_3"]
    for step in PLAN.steps:
        run = load_run(tmp_path / "cpu" / "gpu_plan" / "slice_3" / step)
        assert run.config["n_train"] == 48 and run.config["n_test"] == 24
        expected = score(truth, run.test_pred)["score"]
        assert rows.set_index("step").loc[step, "score"] == pytest.approx(expected, abs=1e-4)
    finetune = load_run(tmp_path / "cpu" / "gpu_plan" / "slice_3" / PLAN.steps[-1])
    assert finetune.config["recipe"] == "finetune" and finetune.config["epochs"] == 1
    assert "amp None" in lines["gpu_finetune_from_best"]  # off CUDA: full precision
    # --compare: the earlier rows of the same cut beside this run's
    cut = rows["cut"].iloc[0]
    table = gpu_plan.format_plan(rows.to_dict("records"),
                                 gpu_plan.earlier_rows(results, cut, "cpu"), "cpu")
    assert "score (cpu)" in table and "Δ score" in table and "seconds (cpu)" in table
    assert gpu_plan.earlier_rows(results, "another cut", "cpu") is None


def test_a_failing_step_is_a_fail_row_the_blend_goes_on_and_exit_is_1(gpu_plan, tmp_path,
                                                                       monkeypatch, capsys):
    run_in = gpu_plan.run_in

    def failing(spec, bench, rotation):
        if spec.name in PLAN.steps[1:3]:
            raise RuntimeError(f"planted failure in {spec.name}")
        return run_in(spec, bench, rotation)

    monkeypatch.setattr(gpu_plan, "run_in", failing)
    assert gpu_plan.main([*TINY, "--out", str(tmp_path), "--no-check", "--compare", "cuda"]) == 1
    out = capsys.readouterr().out
    assert "--compare cuda: " in out and "has no cuda rows of data " in out
    lines = step_lines(out)
    assert " FAIL " in lines["cpu_lite1"] and "planted failure in cpu_lite1" in lines["cpu_lite1"]
    assert " ok " in lines[PLAN.name] and "07 over 2 runs" in lines[PLAN.name], out
    assert "FAILED: cpu_lite1, cpu_lite2" in out
    rows = pd.read_csv(tmp_path / "tiny.csv")  # tiny rows stay out of results/gpu_plan.csv
    assert list(rows["status"]) == ["ok", "FAIL", "FAIL", "ok", "ok"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from utils.dev.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("cut") / "data", n_train=40, n_test=6, n_genes=20,
                      n_train_slices=4, image_size=32, seed=4)


def test_the_cut_keeps_the_sections_spots_and_only_the_weights_that_fit(gpu_plan, demo,
                                                                        tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tf_efficientnet_lite0.in1k.safetensors").write_bytes(b"0" * 1000)
    (weights / "tf_efficientnet_lite1.in1k.safetensors").write_bytes(b"0" * 2_000_000)
    cut = tmp_path / "cut"
    assert gpu_plan.main(["--write-cut", str(cut), "--data", str(demo), "--sections",
                          str(demo / "demo_slices.csv"), "--weights", str(weights), "--train",
                          "slice_1", "slice_2", "--held", "slice_4", "--spots", "4",
                          "--budget-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite1: its weights (2.0 MB) do not fit" in out
    assert "tf_efficientnet_lite2: no weights file" in out
    data, sections = load_data(cut), pd.read_csv(cut / "demo_slices.csv")
    assert len(data.train) == 12 and len(data.test) == gpu_plan.CUT_TEST_ROWS
    assert sections["slice"].value_counts().to_dict() == {"slice_1": 4, "slice_2": 4,
                                                          "slice_4": 4}
    source = load_data(demo)
    rows = source.train["ID"].isin(data.train["ID"]).to_numpy()
    np.testing.assert_allclose(data.y, source.y[rows], rtol=1e-6)
    assert [p.name for p in (cut / "weights").iterdir()] == [
        "tf_efficientnet_lite0.in1k.safetensors"]
    args = gpu_plan.parse_args(["--data", str(cut)])  # the weights beside the cut
    assert args.weights == str(cut / "weights")
    specs, left_out = gpu_plan.plan_specs(args, "cuda")
    assert [s.name for s in specs] == ["cpu_lite0", "gpu_finetune_from_best", PLAN.name]
    assert specs[-1].members == ("cpu_lite0", "gpu_finetune_from_best")
    assert [line.split(":")[0] for line in left_out] == ["cpu_lite1", "cpu_lite2"]
    assert all(s.params["COMPILE"] is True and s.params["OVERWRITE"] for s in specs[:-1])
    assert specs[0].params["PRETRAINED"].endswith("tf_efficientnet_lite0.in1k.safetensors")
    # --compare matches on the plan's settings: not COMPILE nor the weights' folder, but EPOCHS
    elsewhere = shutil.copytree(cut / "weights", tmp_path / "elsewhere")
    on_cpu = gpu_plan.plan_specs(gpu_plan.parse_args(["--data", str(cut), "--weights",
                                                      str(elsewhere)]), "cpu")[0]
    assert gpu_plan.plan_digest(on_cpu) == gpu_plan.plan_digest(specs)
    shorter = gpu_plan.plan_specs(gpu_plan.parse_args(["--data", str(cut), "--epochs", "1"]),
                                  "cuda")[0]
    assert gpu_plan.plan_digest(shorter) != gpu_plan.plan_digest(specs)
