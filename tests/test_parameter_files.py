"""presets/*.yaml: papermill parameter files whose every key is a parameter of their notebook
and whose values make a valid config; cpu_best.yaml runs on any data folder given as DATA_DIR."""

from pathlib import Path

import pytest
import yaml

from utils import config
from utils.dev.pipeline import DEMO_MODEL, execute_notebook, list_notebooks
from utils.paths import kit_root

PRESETS = sorted((kit_root() / "presets").glob("*.yaml"))
NOTEBOOK = {"ensemble": "07_ensemble_submit"}  # every other preset is for 05_train
CONFIG = {"05_train": config.TrainConfig, "07_ensemble_submit": config.SubmitConfig}


def notebook_of(path: Path) -> str:
    return NOTEBOOK.get(path.stem, "05_train")


def test_there_are_cpu_gpu_and_ensemble_presets():
    assert {"cpu_best", "gpu_finetune_cnn", "gpu_foundation_ridge", "ensemble"} <= {
        p.stem for p in PRESETS}


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
