"""presets/*.yaml: papermill parameter files whose every key is a parameter of their notebook
and whose values make a valid config; cpu_best.yaml runs on any data folder given as DATA_DIR;
cpu_ensemble.yaml and gpu_ensemble.yaml blend exactly the runs of the 05 presets they name, end
to end."""

import json
from pathlib import Path

import pytest
import yaml

from utils import config
from utils.dev.pipeline import DEMO_MODEL, execute_notebook, list_notebooks
from utils.places import kit_root

PRESETS = sorted((kit_root() / "presets").glob("*.yaml"))
CONFIG = {"05_train": config.TrainConfig, "07_ensemble_submit": config.SubmitConfig}


def notebook_of(path: Path) -> str:
    """07 for a preset that lists runs to blend, 05 for every other."""
    return "07_ensemble_submit" if "RUNS" in yaml.safe_load(path.read_text()) else "05_train"


def load_preset(name: str) -> dict:
    return yaml.safe_load((kit_root() / "presets" / f"{name}.yaml").read_text())


def members_of(ensemble: dict) -> list[str]:
    """The 05 presets whose runs a 07 preset's RUNS are (matched by RUN_DIR)."""
    by_run = {load_preset(p.stem)["RUN_DIR"]: p.stem for p in PRESETS
              if notebook_of(p) == "05_train"}
    missing = [run for run in ensemble["RUNS"] if run not in by_run]
    assert not missing, f"RUNS {missing} are the RUN_DIR of no 05 preset"
    return [by_run[run] for run in ensemble["RUNS"]]


def test_there_are_cpu_gpu_and_ensemble_presets():
    assert {"cpu_best", "gpu_finetune_cnn", "gpu_foundation_ridge", "ensemble",
            "cpu_ensemble", "gpu_ensemble"} <= {p.stem for p in PRESETS}


def test_the_cpu_ensemble_blends_cpu_runs_of_every_backbone_on_the_same_folds():
    members = [load_preset(name) for name in members_of(load_preset("cpu_ensemble"))]
    assert {m["BACKBONE"] for m in members} >= {f"tf_efficientnet_lite{i}" for i in range(3)}
    assert {m["CV"] for m in members} == {"slices"}  # 07 blends runs made on the same folds
    assert len({m["RUN_DIR"] for m in members}) == len(members)


def test_the_foundation_preset_is_a_proven_hub_model_at_its_magnification():
    from utils.models import HUB_MODELS

    values = yaml.safe_load((kit_root() / "presets" / "gpu_foundation_ridge.yaml").read_text())
    hub_model = HUB_MODELS[values["BACKBONE"]]  # built offline by tests/test_hub_models.py
    assert values["MODEL_MPP"] == hub_model["mpp"] and values["RECIPE"] == "ridge"
    assert values["FEATURE_DTYPE"] == "float16" and values["PCA_DIM"] == 256  # as HEST


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_keys_are_notebook_parameters_and_make_a_valid_config(path):
    from test_notebooks import _parameters

    values = yaml.safe_load(path.read_text())
    notebook = next(p for p in list_notebooks() if p.stem == notebook_of(path))
    unknown = set(values) - set(_parameters(notebook))
    assert not unknown, f"{path.name}: not parameters of {notebook.name}: {unknown}"
    assert "DATA_DIR" not in values, f"{path.name} must work on any DATA_DIR"
    config.from_params(CONFIG[notebook.stem], values)  # raises on a bad value


@pytest.mark.smoke
def test_cpu_best_runs_on_a_data_folder_given_as_data_dir(demo_pipeline, tmp_path):
    from utils.runs import load_run

    values = yaml.safe_load((kit_root() / "presets" / "cpu_best.yaml").read_text())
    notebook = next(p for p in list_notebooks() if p.stem == "05_train")
    run_dir = tmp_path / "runs" / "cpu_best"
    # offline test: the tiny random-weight model instead of hub weights; the recipe is the file's
    execute_notebook(notebook, {**values, **DEMO_MODEL, "DATA_DIR": str(demo_pipeline["data"]),
                                "RUN_DIR": str(run_dir)}, tmp_path / "05.ipynb")
    run = load_run(run_dir)
    assert run.config["recipe"] == values["RECIPE"] and run.cv["splitter"] == "slices"


def test_the_gpu_ensemble_is_the_cpu_ensemble_plus_the_fine_tune_from_cpu_best():
    cpu, gpu = members_of(load_preset("cpu_ensemble")), members_of(load_preset("gpu_ensemble"))
    assert gpu == [*cpu, "gpu_finetune_from_best"]
    assert load_preset("gpu_finetune_from_best")["CV"] == "slices"


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["cpu_ensemble", "gpu_ensemble"])
def test_ensemble_presets_run_end_to_end_on_a_data_folder(name, demo_pipeline, tmp_path):
    """Every member preset through 05 (the tiny model, the recipe of the file), then 07 with
    the ensemble's file: a submission and a blend report over exactly those runs."""
    notebooks = {p.stem: p for p in list_notebooks()}
    ensemble, data = load_preset(name), str(demo_pipeline["data"])
    for member in members_of(ensemble):
        values = load_preset(member)
        execute_notebook(notebooks["05_train"], {
            **values, **DEMO_MODEL, "DATA_DIR": data,
            "RUN_DIR": str(tmp_path / values["RUN_DIR"])}, tmp_path / f"{member}.ipynb")
    submission = tmp_path / f"{name}.csv"
    execute_notebook(notebooks["07_ensemble_submit"], {
        **ensemble, "DATA_DIR": data, "RUNS": [str(tmp_path / r) for r in ensemble["RUNS"]],
        "SUBMISSION": str(submission)}, tmp_path / "07.ipynb")
    report = json.loads(submission.with_suffix(".blend.json").read_text())
    assert [r["path"] for r in report["runs"]] == [str(tmp_path / r) for r in ensemble["RUNS"]]
    assert len(submission.read_text().splitlines()) == 1 + 80  # the demo's 80 test rows
