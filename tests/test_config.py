"""Notebook parameters → typed, frozen, validated configs."""

import dataclasses

import pytest

from utils.config import SubmitConfig, TrainConfig, from_params, to_dict


def test_from_params_reads_upper_case_names_and_ignores_the_rest():
    params = {"RUN_DIR": "runs/x", "N_FOLDS": 5, "other": 1, "ALPHAS": [1, 2]}
    cfg = from_params(TrainConfig, params)
    assert cfg.run_dir == "runs/x" and cfg.n_folds == 5 and cfg.alphas == (1.0, 2.0)
    assert cfg.cv == "slices"  # default: one unseen slice per fold
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


@pytest.mark.parametrize("params, message", [
    ({"RECIPE": "magic"}, "RECIPE='magic' is unknown"),
    ({"CV": "kfold"}, "CV='kfold' is unknown"),
    ({"N_FOLDS": 0}, "N_FOLDS"),
    ({"IMG_SIZE": 6.5}, "IMG_SIZE"),
    ({"PCA_DIM": -1}, "PCA_DIM"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        from_params(TrainConfig, params)


def test_pretrained_text_from_the_command_line_becomes_bool():
    assert from_params(TrainConfig, {"PRETRAINED": "False"}).pretrained is False
    assert from_params(TrainConfig, {"PRETRAINED": "w.safetensors"}).pretrained == "w.safetensors"


def test_groups_splitter_is_accepted_and_config_is_json_ready():
    cfg = from_params(TrainConfig, {"CV": "groups:slices.csv"})
    assert to_dict(cfg)["cv"] == "groups:slices.csv"


def test_submit_config_runs():
    assert from_params(SubmitConfig, {"RUNS": "runs/a"}).runs == ("runs/a",)
    assert from_params(SubmitConfig, {"RUNS": ["runs/a", "runs/b"]}).runs == ("runs/a", "runs/b")
    assert from_params(SubmitConfig, {"RUNS": []}).runs == ()  # empty: found under RUNS_ROOT
