"""Plans (utils.plans) and the starter notebook: choosing a plan, estimates, platform places for
runs and the CSV, offline weights, the messages of a missing or changed run, a plan step equal
to its preset's papermill run, and 00_quickstart on the demo set."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_dacon

from utils import places, plans
from utils.config import QuickstartConfig, TrainConfig
from utils.cv import score_folds
from utils.data import load_data
from utils.dev.pipeline import DEMO_MODEL, execute_notebook
from utils.runs import RunNotFoundError, load_run, save_run, select_runs
from utils.submit import validate_submission

KIT = Path(__file__).resolve().parent.parent


def test_every_plan_names_presets_that_exist_and_have_rates():
    rates = plans.load_rates()
    for name in plans.list_plans():
        plan = plans.create_plan(name)
        assert plan.blend is None or (KIT / "presets" / f"{plan.blend}.yaml").is_file()
        for step in plan.steps:
            assert plans.read_preset(step)["RUN_DIR"], step
            assert {(step, "cpu"), (step, "cuda")} <= set(rates), step
    with pytest.raises(ValueError, match="PLAN='nope'.*cpu_fast"):
        plans.create_plan("nope")


def test_estimate_sums_each_steps_rate_times_patches():
    rates = plans.load_rates()
    plan = plans.create_plan("cpu_ensemble")
    expected = sum(rates[s, "cpu"]["seconds_per_patch"] for s in plan.steps) * 9269 / 60
    assert plans.estimate_minutes(plan, 9269) == pytest.approx(expected)
    assert plans.estimate_minutes(plan, 2 * 9269) == pytest.approx(2 * expected)
    assert plans.estimate_minutes(plan, 9269, "cuda") < expected


def test_choose_plan_by_cuda_and_budget():
    cpu_minutes = plans.estimate_minutes(plans.PLANS["cpu_ensemble"], 9269)
    assert plans.choose_plan("auto", 9269, cuda=True, budget_minutes=1).name == "gpu_ensemble"
    assert plans.choose_plan("auto", 9269, cuda=False,
                             budget_minutes=cpu_minutes + 1).name == "cpu_ensemble"
    assert plans.choose_plan("auto", 9269, cuda=False,
                             budget_minutes=cpu_minutes - 1).name == "cpu_fast"
    assert plans.choose_plan("cpu_best", 9269, cuda=True).name == "cpu_best"  # named: as asked


@pytest.fixture
def platform(tmp_path, monkeypatch):
    """The platform roots in a temporary folder, none present: a local machine."""
    monkeypatch.setenv(places.PLATFORM_ROOT, str(tmp_path))
    return {"kaggle": tmp_path / places.KAGGLE_WORKING, "content": tmp_path / places.COLAB_CONTENT,
            "drive": tmp_path / places.COLAB_DRIVE, "input": tmp_path / places.KAGGLE_INPUT}


def test_run_root_and_submission_per_platform(platform):
    assert places.default_run_root() == places.kit_root() / "runs"
    assert places.default_submission() == places.kit_root() / "submissions" / "submission.csv"
    platform["content"].mkdir()
    with pytest.warns(places.VolatileRunsWarning, match="runtime reset"):
        assert places.default_run_root() == platform["content"] / "runs"
    assert places.default_submission() == platform["content"] / "submission.csv"
    assert places.submission_copies("x/submission.csv") == []
    platform["drive"].mkdir(parents=True)
    assert places.default_run_root() == platform["drive"] / "mai-kit" / "runs"
    assert places.submission_copies("x/s.csv") == [platform["drive"] / "mai-kit" / "s.csv"]
    platform["kaggle"].mkdir(parents=True)
    assert places.default_run_root() == platform["kaggle"] / "runs"
    assert places.default_submission() == platform["kaggle"] / "submission.csv"
    assert plans.run_root(QuickstartConfig()) == platform["kaggle"] / "runs"
    assert plans.run_root(QuickstartConfig(run_root="/elsewhere")) == Path("/elsewhere")


def test_weights_found_by_timm_name_in_any_attached_dataset(platform, monkeypatch):
    plan = plans.create_plan("cpu_ensemble")
    deep = platform["input"] / "datasets" / "someone" / "lite-weights" / "v1"
    deep.mkdir(parents=True)
    for i in (0, 1):
        (deep / f"tf_efficientnet_lite{i}.in1k.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(plans.WeightsNotFoundError) as err:
        plans.find_plan_weights(plan)
    assert "['tf_efficientnet_lite2']" in str(err.value)
    assert "tf_efficientnet_lite2.in1k.safetensors" in str(err.value)
    (deep / "tf_efficientnet_lite2.in1k.safetensors").write_bytes(b"")
    found = plans.find_plan_weights(plan)
    assert found == {f"tf_efficientnet_lite{i}": str(deep / f"tf_efficientnet_lite{i}.in1k"
                                                            ".safetensors") for i in range(3)}
    assert plans.find_plan_weights(plan, overrides={"PRETRAINED": False}) == {}
    cfg = plans.step_config("cpu_lite1", QuickstartConfig(), Path("/r"), found)
    assert cfg.pretrained == found["tf_efficientnet_lite1"]
    assert cfg.run_dir == "/r/cpu_centred_lite1"


def _save_run(folder, n=12, g=4, n_test=5):
    rng = np.random.default_rng(0)
    y, folds = rng.random((n, g)), np.arange(n) % 3
    return save_run(folder, {"recipe": "ridge"}, folds, y, rng.random((n_test, g)),
                    score_folds(y, y, folds, "blocks"))


def test_07_finds_a_run_by_name_under_the_root_or_says_why_it_is_missing(platform, tmp_path):
    _save_run(tmp_path / "root" / "cpu_centred_lite0")
    found = select_runs(["runs/cpu_centred_lite0"], tmp_path / "root")
    assert found == [tmp_path / "root" / "cpu_centred_lite0"]
    with pytest.raises(RunNotFoundError) as err:
        select_runs(["runs/cpu_centred_lite0", "runs/cpu_centred_lite2"], tmp_path / "root")
    msg = str(err.value)
    assert "'cpu_centred_lite2'" in msg and str(tmp_path / "root" / "cpu_centred_lite2") in msg
    assert "runtime reset" in msg and "other data" in msg and "never trained" in msg
    assert "presets/cpu_lite2.yaml" in msg and "Traceback" not in msg


def test_05_names_each_parameter_that_differs_from_the_existing_run(tmp_path):
    from utils import train

    data_dir = make_dacon(tmp_path, n_train=18, n_test=6)
    cfg = TrainConfig(data_dir=str(data_dir), run_dir=str(tmp_path / "run"),
                      backbone="test_convnext", pretrained=False, img_size=32, cv="blocks",
                      n_folds=3, tta=False)
    data = load_data(data_dir)
    folds, _ = train.make_cv_folds(cfg, data)
    train.train(cfg, data, folds)
    changed = replace(cfg, alphas=(1.0, 10.0), pca_dim=4)
    with pytest.raises(FileExistsError) as err:
        train.train(changed, data, folds)
    msg = str(err.value)
    assert "  ALPHAS: [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0] → [1.0, 10.0]" in msg, msg
    assert "  PCA_DIM: None → 4" in msg and "OVERWRITE=True" in msg and "new name" in msg


def _demo(tmp_path):
    from utils.dev.demo import write_demo

    return write_demo(tmp_path / "data", n_train=120, n_test=40, n_genes=60, seed=3)


@pytest.mark.smoke
def test_a_plan_step_makes_the_run_its_presets_papermill_run_makes(tmp_path):
    data_dir = _demo(tmp_path)
    tiny = {**DEMO_MODEL, "TTA": False}
    execute_notebook(KIT / "notebooks" / "05_train.ipynb",
                     {**plans.read_preset("cpu_lite0"), **tiny, "DATA_DIR": str(data_dir),
                      "RUN_DIR": str(tmp_path / "papermill" / "cpu_centred_lite0")},
                     tmp_path / "05.ipynb")
    cfg = QuickstartConfig(data_dir=str(data_dir), run_root=str(tmp_path / "plan"),
                           overrides=tiny)
    step_cfg = plans.step_config("cpu_lite0", cfg, plans.run_root(cfg))
    in_process = plans.run_step(step_cfg, load_data(data_dir))
    by_papermill = load_run(tmp_path / "papermill" / "cpu_centred_lite0")
    assert in_process.path == tmp_path / "plan" / "cpu_centred_lite0"
    assert by_papermill.config["centre_features"] and by_papermill.config["target_pca"] == 8
    ignore = {"run_dir", "elapsed_s", "peak_rss_gb"}
    assert ({k: v for k, v in in_process.config.items() if k not in ignore}
            == {k: v for k, v in by_papermill.config.items() if k not in ignore})
    np.testing.assert_allclose(in_process.oof, by_papermill.oof, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_process.test_pred, by_papermill.test_pred, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.smoke
def test_quickstart_runs_the_auto_plan_on_the_demo_set_and_reuses_it(tmp_path):
    data_dir = _demo(tmp_path)
    params = {"DATA_DIR": str(data_dir), "SMOKE": True, "RUN_ROOT": str(tmp_path / "runs"),
              "SUBMISSION": str(tmp_path / "out" / "submission.csv"), "OVERRIDES": DEMO_MODEL}
    first = execute_notebook(KIT / "notebooks" / "00_quickstart.ipynb", params,
                             tmp_path / "00.ipynb")
    text = json.dumps(json.loads(first.read_text())["cells"])
    assert "plan cpu_ensemble" in text and "min on cpu" in text  # no CUDA here: the CPU plan
    for step in ("cpu_lite0", "cpu_lite1", "cpu_lite2"):
        assert f"presets/{step}.yaml" in text
    assert "checked against sample_submission.csv" in text and "CV (blocks, 3 folds" in text
    assert "Next: 01_eda" in text
    written = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"ID": str})
    validate_submission(written, load_data(data_dir, smoke=True).sample)
    runs = sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir() if p.is_dir())
    assert runs == ["cpu_centred_lite0", "cpu_centred_lite1", "cpu_centred_lite2"]
    again = execute_notebook(KIT / "notebooks" / "00_quickstart.ipynb", params,
                             tmp_path / "00-again.ipynb")
    assert json.dumps(json.loads(again.read_text())["cells"]).count(
        "already trained with these parameters") == 3  # a restart reuses every finished run


def read_plan_table(readme: Path = KIT / "README.md") -> dict[str, dict[str, str]]:
    """The README's plan table (between the plan-table markers): plan → its columns."""
    text = readme.read_text()
    table = text[text.index("<!-- plan-table -->"):text.index("<!-- /plan-table -->")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    header, body = rows[0], rows[1:]
    return {row[0].strip("`"): dict(zip(header, row)) for row in body}


def test_the_readmes_plan_table_lists_every_plan_with_the_estimates_minutes():
    table = read_plan_table()
    assert set(table) == set(plans.list_plans())
    for name, row in table.items():
        device = "cuda" if plans.create_plan(name).gpu else "cpu"
        minutes = row["minutes at DACON scale (9,269 patches)"].split()[0]
        assert int(minutes) == round(plans.estimate_minutes(plans.create_plan(name), 9269,
                                                            device)), name
        assert 0.5 < float(row["her2st held-out mean"]) < 0.6, name
