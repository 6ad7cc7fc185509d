"""Notebooks: committed clean, one parameters cell, and (smoke tier) run top to bottom on the
demo set with a tiny timm model, checked by what they wrote."""

import ast
import json

import numpy as np
import pandas as pd
import pytest
from conftest import blind_cv_score, blind_predictions

from utils.dev.pipeline import list_notebooks
from utils.metric import score
from utils.runs import load_run
from utils.submit import validate_submission

NOTEBOOKS = list_notebooks()
REQUIRED_PARAMETERS = {
    "00_quickstart": {"DATA_DIR", "PLAN", "TIME_BUDGET", "RUN_ROOT", "SUBMISSION", "WEIGHTS",
                      "SMOKE", "OVERRIDES"},
    "01_eda": {"DATA_DIR", "RUN_DIR", "SMOKE", "SEED", "IMAGE_STRIDE", "WINDOW"},
    "02_gene_clustering": {"DATA_DIR", "RUN_DIR", "SMOKE", "SEED", "STRATEGIES", "K", "K_RANGE",
                           "GROUPS_FILE"},
    "03_augmentation_screening": {"DATA_DIR", "RUN_DIR", "CANDIDATES", "N_PATCHES", "SEED",
                                  "SMOKE", "DINO_MODEL", "DINO_PRETRAINED", "LPIPS_NET",
                                  "MIN_DINO_SIM", "MAX_LPIPS", "MAX_STAIN_SHIFT", "MIN_SSIM"},
    "04_adapt": {"DATA_DIR", "RUN_DIR", "BACKBONE", "PRETRAINED", "OBJECTIVE", "VIEWS", "SPLITS",
                 "IMG_SIZE", "EPOCHS", "BATCH_SIZE", "STEPS_PER_EPOCH", "LR", "SEED", "SMOKE",
                 "RESUME", "OVERWRITE", "DEVICES"},
    "05_train": {"DATA_DIR", "RUN_DIR", "RECIPE", "BACKBONE", "PRETRAINED", "IMG_SIZE", "CV",
                 "N_FOLDS", "SEED", "SMOKE", "EPOCHS", "BATCH_SIZE", "LR", "HEAD_LR",
                 "WEIGHT_DECAY", "WARMUP_EPOCHS", "GRAD_CLIP", "ACCUMULATE", "EMA", "PATIENCE",
                 "LOSS", "TARGET_PCA", "GROUP_STRATEGY", "GENE_GROUPS", "GROUP_MODE", "AUGMENT",
                 "FREEZE", "FREEZE_BN", "HEAD_INIT", "DROP_PATH", "NUM_WORKERS", "RESUME"},
    "06_gradcam": {"DATA_DIR", "RUN_DIR", "SMOKE", "FOLD", "PATCHES", "N_PATCHES", "METHOD",
                   "TARGETS", "GENE_GROUPS", "GROUP_STRATEGY", "STRATEGIES", "GENES_PER_GROUP",
                   "SCALE",
                   "LAYER", "RESHAPE", "SEED"},
    "07_ensemble_submit": {"DATA_DIR", "RUNS", "RUNS_ROOT", "SUBMISSION", "BLEND", "GENE_GROUPS",
                           "GROUP_STRATEGY", "SHRINK", "POSTPROCESS"},
}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _parameters(path) -> dict[str, str]:
    """Names assigned in the parameters cell → their source line."""
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    source = "".join(cells[0]["source"])
    lines = source.splitlines()
    return {t.id: lines[node.lineno - 1] for node in ast.parse(source).body
            for t in node.targets}


def test_the_pipeline_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= set(REQUIRED_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_upper_case_literals_with_comments(path):
    params = _parameters(path)
    assert REQUIRED_PARAMETERS.get(path.stem, set()) <= set(params), path.name
    for name, line in params.items():
        assert name.isupper(), f"{path.name}: parameter {name} is not UPPER_CASE"
        assert "#" in line, f"{path.name}: parameter {name} has no comment"
        ast.literal_eval(line.split("=", 1)[1].split("#", 1)[0].strip())


CONFIGS = {"00_quickstart": "QuickstartConfig", "01_eda": "EdaConfig",
           "02_gene_clustering": "GeneClusteringConfig",
           "03_augmentation_screening": "ScreenConfig", "04_adapt": "AdaptConfig",
           "05_train": "TrainConfig",
           "06_gradcam": "CamConfig", "07_ensemble_submit": "SubmitConfig"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_and_config_defaults_agree(path):
    """One source of defaults: every parameter is a config field with the same default, and
    every config field is a parameter."""
    import dataclasses

    from utils import config
    from utils.files import as_json

    cls = getattr(config, CONFIGS[path.stem])
    defaults = {f.name.upper(): f.default_factory() if f.default is dataclasses.MISSING
                else f.default for f in dataclasses.fields(cls)}
    params = {name: ast.literal_eval(line.split("=", 1)[1].split("#", 1)[0].strip())
              for name, line in _parameters(path).items()}
    assert set(params) == set(defaults), (f"{path.name}: parameters without a field "
                                          f"{set(params) - set(defaults)}, fields without a "
                                          f"parameter {set(defaults) - set(params)}")
    differ = {k: (params[k], defaults[k]) for k in params
              if as_json(params[k]) != as_json(defaults[k])}
    assert not differ, f"{path.name}: notebook default vs {cls.__name__} default: {differ}"


@pytest.mark.smoke
def test_every_notebook_ran(demo_pipeline):
    ran = {p.name.split(".")[0] for p in demo_pipeline["executed"]}
    assert ran == {p.stem for p in NOTEBOOKS}
    for path in demo_pipeline["executed"]:
        errors = [o for c in _cells(path) for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: {errors}"


@pytest.mark.smoke
def test_train_notebook_wrote_a_sane_run(demo_pipeline):
    from utils.config import FeatureSpec
    from utils.data import load_data
    from utils.features import cached_features
    from utils.train import cv_ridge

    run = load_run(demo_pipeline["runs"] / "ridge")
    slices = pd.read_csv(demo_pipeline["data"] / "demo_slices.csv")["slice"]
    assert run.cv["splitter"] == "slices" and run.cv["n_folds"] == slices.nunique()
    assert run.config["backbone"] == "test_convnext" and run.config["tta"] is False
    # it learns from the images: it beats image-blind models by a clear margin (the mean
    # profile plus noise, and the same ridge on patches shuffled across rows)
    data = load_data(demo_pipeline["data"])
    features = cached_features(data, FeatureSpec("test_convnext", False, 64, tta=False))
    shuffled = np.random.default_rng(0).permutation(len(data.y))
    blind = max(blind_cv_score(data.y, run.folds),
                cv_ridge(features["train"][shuffled], data.y, features["test"], run.folds,
                         run.config["alphas"]).cv["overall"]["score"])
    assert run.cv["overall"]["score"] > blind + 0.05, (run.cv["overall"], blind)


@pytest.mark.smoke
def test_submission_is_valid_and_scores_on_the_unseen_slice(demo_pipeline):
    data = demo_pipeline["data"]
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})
    submission = pd.read_csv(demo_pipeline["submission"], dtype={"ID": str})
    validate_submission(submission, sample)
    truth = pd.read_csv(data / "demo_test_truth.csv", dtype={"ID": str}).set_index("ID")
    truth = truth.loc[submission["ID"], submission.columns[1:]].to_numpy()
    parts = score(truth, submission.iloc[:, 1:].to_numpy())
    assert np.isfinite(list(parts.values())).all(), parts
    y = pd.read_csv(data / "train.csv").iloc[:, 2:].to_numpy()
    blind = max(score(truth, blind_predictions(y, len(truth), seed, noise))["score"]
                for seed in range(5) for noise in (0.0, 0.01, 0.05, 0.2))
    assert parts["score"] > blind + 0.05, (parts, blind)  # better than any image-blind guess


@pytest.mark.smoke
def test_smoke_quick_check_runs_every_notebook_on_a_subset_apart_from_real_runs(tmp_path):
    """SMOKE = True: every notebook runs on a few dozen rows, says its scores mean nothing, and
    writes under smoke/ folders, never where a real run lives."""
    from utils.dev.demo import write_demo
    from utils.dev.pipeline import demo_parameters, run_notebooks

    data = write_demo(tmp_path / "data", n_train=240, n_test=80, n_genes=120, seed=2)
    runs, submission = tmp_path / "runs", tmp_path / "submissions" / "check.csv"
    executed = run_notebooks(demo_parameters(str(data), str(runs), str(submission), smoke=True),
                             tmp_path / "executed")
    assert {p.name.split(".")[0] for p in executed} == {p.stem for p in NOTEBOOKS}
    for path in executed:
        text = json.dumps(_cells(path))
        assert "SMOKE quick check on 48 of 240 train, 16 of 80 test rows" in text, path.name
        assert "scores mean nothing" in text
    assert not (runs / "ridge").exists() and not submission.exists()  # real places untouched
    run = load_run(runs / "smoke" / "ridge")
    assert len(run.oof) == 48 and run.cv["n_folds"] == 3
    written = pd.read_csv(tmp_path / "submissions" / "smoke" / "check.csv")
    assert len(written) == 16


def test_smoke_moves_outputs_and_run_folders_but_reads_an_existing_input_file_as_given(tmp_path):
    """SMOKE = True writes under smoke/ and reads runs from smoke/ (their rows are SMOKE rows); a
    policy or gene-group file the user named that exists is read where it is."""
    from utils.config import SMOKE_PX, CamConfig, SubmitConfig, TrainConfig

    policy = tmp_path / "aug" / "augment_policy.json"
    policy.parent.mkdir()
    policy.write_text("{}")
    groups = tmp_path / "genes" / "gene_groups.csv"
    cfg = TrainConfig(recipe="finetune", smoke=True, run_dir="runs/lite0", augment=str(policy),
                      gene_groups=str(groups))
    assert cfg.augment == str(policy)  # exists: as given (it used to move to aug/smoke/)
    assert cfg.gene_groups == str(tmp_path / "genes" / "smoke" / "gene_groups.csv")  # absent
    assert cfg.run_dir == "runs/smoke/lite0" and cfg.img_size == SMOKE_PX and cfg.epochs == 1
    assert TrainConfig(smoke=True, img_size=32).img_size == 32
    assert TrainConfig(augment=str(policy)).augment == str(policy)
    groups.parent.mkdir()
    groups.write_text("gene,group,strategy\n")
    cam = CamConfig(smoke=True, run_dir="runs/ft", gene_groups=str(groups))
    assert cam.run_dir == "runs/smoke/ft" and cam.gene_groups == str(groups)
    submit = SubmitConfig(smoke=True, runs=("runs/a",), gene_groups=str(groups))
    assert submit.runs == ("runs/smoke/a",) and submit.submission.startswith("submissions/smoke/")
    assert submit.gene_groups == str(groups)
