"""Notebook parameters → typed, frozen, validated configs."""

import dataclasses

import pytest

from utils.config import CamConfig, SubmitConfig, TrainConfig, from_params, to_dict


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


def test_file_splitter_is_accepted_and_config_is_json_ready():
    cfg = from_params(TrainConfig, {"CV": "file:slices.csv"})
    assert to_dict(cfg)["cv"] == "file:slices.csv"


@pytest.mark.parametrize("cls", [CamConfig, SubmitConfig])
def test_gene_grouping_is_group_strategy_everywhere(cls):
    assert from_params(cls, {"GROUP_STRATEGY": "kmeans"}).group_strategy == "kmeans"


def test_the_feature_spec_is_built_once_from_the_config():
    cfg = TrainConfig(backbone="m", pretrained=False, img_size=48, feature_crops="1,0.5",
                      smoke=True)  # SMOKE caps IMG_SIZE at 64
    spec = cfg.feature_spec
    assert spec is cfg.feature_spec and spec.tta is False  # SMOKE: no TTA
    assert (spec.backbone, spec.img_size, spec.crops, spec.mpp) == ("m", 48, (1.0, 0.5), 0.3)
    assert "feature_spec" not in to_dict(cfg)  # not a parameter: config.json is unchanged


def test_submit_config_runs():
    assert from_params(SubmitConfig, {"RUNS": "runs/a"}).runs == ("runs/a",)
    assert from_params(SubmitConfig, {"RUNS": ["runs/a", "runs/b"]}).runs == ("runs/a", "runs/b")
    assert from_params(SubmitConfig, {"RUNS": []}).runs == ()  # empty: found under RUNS_ROOT
