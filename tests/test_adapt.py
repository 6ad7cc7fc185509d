"""04_adapt: views from the augmentation registry, every objective writes weights that 05 takes
as PRETRAINED (ridge and fine-tuning), resume equivalence, it learns something a no-op cannot,
errors that name the parameter, and the notebook run top to bottom (smoke)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from utils import adapt, loop
from utils.augment import save_policy
from utils.config import AdaptConfig, FeatureSpec, TrainConfig, from_params
from utils.data import load_data, load_images
from utils.features import extract_features
from utils.models import create_backbone, save_weights


class Killed(Exception):
    """Stands for the session dying mid-run."""


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A small demo set with tissue-like 64 px patches (its images are what SSL trains on)."""
    from utils.dev.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("adapt") / "demo", n_train=160, n_test=48,
                      n_genes=60, image_size=64, seed=4)


@pytest.fixture(scope="module")
def demo_images(demo_dir):
    data = load_data(demo_dir)
    return [np.asarray(load_images(data, "train")), np.asarray(load_images(data, "test"))]


def tiny_cfg(tmp_path, **changes) -> AdaptConfig:
    """A few steps of a timm test model at 64 px from seeded random weights."""
    base = AdaptConfig(run_dir=str(tmp_path / "adapt"), backbone="test_convnext",
                       pretrained=False, views="flips+color+hed+blur+crop", img_size=64,
                       epochs=2, batch_size=8, steps_per_epoch=3, n_probe=16, overwrite=True)
    return replace(base, **changes)


def tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --- views ------------------------------------------------------------------------------------

def test_views_come_from_the_registry_and_policy_files(tmp_path):
    names = [item["name"] for item in adapt.view_items("flips+hed+crop", 48)]
    assert names == ["SquareSymmetry", "HEDJitter", "RandomResizedCrop"]
    assert adapt.view_items("crop", 48)[0]["params"]["size"] == [48, 48]
    policy = save_policy(tmp_path / "augment_policy.json",
                         [{"name": "VerticalFlip", "params": {"p": 0.5}}])
    assert [i["name"] for i in adapt.view_items(f"{policy}+color", 48)] == ["VerticalFlip",
                                                                              "ColorJitter"]
    images = np.random.default_rng(0).integers(0, 256, (3, 80, 80, 3), dtype=np.uint8)
    pair = adapt.ViewPairs([images[:2], images[2:]], adapt.build_views("flips+color+crop", 48,
                                                                       (80, 80)))[2]
    assert len(pair) == 2 and all(v.shape == (3, 48, 48) and v.dtype == torch.uint8 for v in pair)
    assert not torch.equal(*pair)  # two different views of one patch


def test_flip_views_only_move_pixels():
    images = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    views = adapt.ViewPairs([images], adapt.build_views("flips", 32, (32, 32), seed=3))
    for view in views[0]:
        assert sorted(view.numpy().ravel()) == sorted(images[0].transpose(2, 0, 1).ravel())


# --- bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    ({"OBJECTIVE": "mae"}, "OBJECTIVE='mae' is unknown"),
    ({"VIEWS": "flips+sharpen"}, "VIEWS='flips\\+sharpen'"),
    ({"BATCH_SIZE": 1}, "BATCH_SIZE"),
    ({"EPOCHS": 0}, "EPOCHS"),
    ({"IMG_SIZE": 6.5}, "IMG_SIZE"),
    ({"SPLITS": ["val"]}, "SPLITS"),
    ({"LR": 0}, "LR"),
    ({"TEMPERATURE": -1}, "TEMPERATURE"),
    ({"MOMENTUM": 1.5}, "MOMENTUM"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        from_params(AdaptConfig, params)


def test_missing_policy_file_is_named(tmp_path):
    cfg = tiny_cfg(tmp_path, views="flips+runs/none/augment_policy.json")
    with pytest.raises(ValueError, match="augment_policy.json"):
        adapt.build_views(cfg.views, 64, (64, 64))


def test_smoke_is_a_quick_check_in_a_smoke_folder():
    cfg = AdaptConfig(run_dir="runs/adapt", smoke=True, epochs=9, img_size=224)
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.img_size) == (1, 2, 64)
    assert cfg.run_dir == "runs/smoke/adapt"


# --- weights that 05 takes --------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["simclr", "byol", "dino"])
def test_each_objective_writes_a_backbone_that_create_backbone_loads(objective, tmp_path,
                                                                     demo_images):
    cfg = tiny_cfg(tmp_path, objective=objective)
    done = adapt.adapt(cfg, demo_images)
    folder = tmp_path / "adapt"
    assert done.weights == folder / "adapt.safetensors" and len(done.history) == 2
    assert all(np.isfinite(r["loss"]) and r["steps"] == 3 for r in done.history)
    for name in ("history.json", "curves.png", "config.json", "checkpoints/last.pt"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text())["objective"] == objective
    start = create_backbone("test_convnext", False, 64, 0).state_dict()
    loaded = create_backbone("test_convnext", str(done.weights), 64).state_dict()
    saved = tensors(done.weights)
    assert set(saved) == set(loaded) == set(start)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # every tensor was loaded
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # and it trained


def test_a_finished_run_is_reused_and_other_parameters_are_refused(tmp_path, demo_images):
    cfg = tiny_cfg(tmp_path, epochs=1, overwrite=False)
    first = adapt.adapt(cfg, demo_images)
    again = adapt.adapt(cfg, demo_images)
    assert again.reused and again.history == first.history
    with pytest.raises(FileExistsError, match="lr"):
        adapt.adapt(replace(cfg, lr=1e-3), demo_images)


def test_05_ridge_and_finetune_take_the_adapted_weights(tmp_path, demo_dir, demo_images):
    from utils import train
    from utils.models import ModelSpec, build_model

    start = save_weights(create_backbone("test_convnext", False, 64, 0),
                         tmp_path / "start.safetensors")  # stands for ImageNet weights
    done = adapt.adapt(tiny_cfg(tmp_path, pretrained=str(start)), demo_images)
    data = load_data(demo_dir)
    base = TrainConfig(data_dir=str(demo_dir), recipe="ridge", backbone="test_convnext",
                       img_size=64, tta=False, cv="blocks", n_folds=3, alphas=(1.0, 100.0))
    folds, _ = train.make_cv_folds(base, data)
    runs = {name: train.train(replace(base, run_dir=str(tmp_path / name), pretrained=str(w)),
                              data, folds) for name, w in (("start", start),
                                                           ("adapted", done.weights))}
    for run in runs.values():
        assert np.isfinite(run.oof).all() and run.config["pretrained"] in (str(start),
                                                                          str(done.weights))
    assert not np.allclose(runs["start"].oof, runs["adapted"].oof)
    images = demo_images[0][:8]
    features = [extract_features(create_backbone("test_convnext", str(w), 64), images,
                                 FeatureSpec("test_convnext", str(w), 64, tta=False),
                                 progress=False) for w in (start, done.weights)]
    assert np.abs(features[0] - features[1]).max() > 1e-3
    spec = ModelSpec(backbone="test_convnext", img_size=64, genes=list(range(len(data.genes))),
                     heads={"all": list(range(len(data.genes)))})
    model = build_model(spec, pretrained=str(done.weights))
    backbone = model.backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in tensors(done.weights).items())
    finetune = replace(base, run_dir=str(tmp_path / "finetune"), recipe="finetune",
                       pretrained=str(done.weights), epochs=1, batch_size=16, patience=None,
                       head_init="random")
    run = train.train(finetune, data, folds)
    assert np.isfinite(run.oof).all()


# --- resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["simclr", "byol"])
def test_resumed_run_ends_as_an_uninterrupted_one(objective, tmp_path, demo_images,
                                                  monkeypatch):
    whole = adapt.adapt(tiny_cfg(tmp_path / "whole", objective=objective, epochs=3),
                        demo_images)
    cfg = tiny_cfg(tmp_path / "killed", objective=objective, epochs=3, overwrite=False)
    original, calls = loop.train_epoch, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", dies_in_epoch_three)
    with pytest.raises(Killed):
        adapt.adapt(cfg, demo_images)
    folder = tmp_path / "killed" / "adapt"
    assert (folder / "checkpoints" / "last.pt").is_file() and not (folder / "config.json").exists()
    monkeypatch.setattr(loop, "train_epoch", original)
    resumed = adapt.adapt(cfg, demo_images)
    a, b = tensors(whole.weights), tensors(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert not list(folder.rglob(".*.tmp-*"))  # atomic writes leave no temporaries


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, demo_images, monkeypatch):
    cfg = tiny_cfg(tmp_path, epochs=2, overwrite=False)
    monkeypatch.setattr(adapt, "finish", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        adapt.adapt(cfg, demo_images)
    with pytest.raises(ValueError, match="RESUME=False"):
        adapt.adapt(replace(cfg, views="flips"), demo_images)


def test_two_processes_adapt_on_the_same_loop(tmp_path, demo_images):
    """DEVICES=2 (two gloo processes on CPU, as on Kaggle's two GPUs): the processes share each
    global batch, process 0 checkpoints, and the run finishes, trained, as one process would."""
    cfg = tiny_cfg(tmp_path, objective="simclr", epochs=2, devices=2)
    done = adapt.adapt(cfg, demo_images)
    assert [r["epoch"] for r in done.history] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["steps"] == 3 for r in done.history)
    start = create_backbone("test_convnext", False, 64, 0).state_dict()
    saved = tensors(done.weights)
    assert any(not torch.equal(saved[k], start[k]) for k in saved)
    with pytest.raises(ValueError, match="multiple of DEVICES=2"):
        adapt.adapt(replace(cfg, run_dir=str(tmp_path / "odd"), batch_size=7), demo_images)


# --- it learns --------------------------------------------------------------------------------

def test_adaptation_makes_held_out_views_agree_more_than_the_start(tmp_path, demo_images):
    """Held-out patches (never trained on): after SimCLR, the two views of a patch are closer
    to each other, relative to other patches, than with the starting weights; a no-op (the
    start itself) cannot pass this."""
    train_images, held_out = demo_images[0][:128], demo_images[1][:48]
    start = save_weights(create_backbone("test_convnext", False, 64, 0),
                         tmp_path / "start.safetensors")
    cfg = tiny_cfg(tmp_path, pretrained=str(start), views="flips+color", epochs=4,
                   batch_size=32, steps_per_epoch=None, lr=1e-3, head_lr=1e-3)
    done = adapt.adapt(cfg, [train_images])
    table = adapt.agreement_table(cfg, held_out, done.weights)
    assert table.loc["adapted", "gap"] > table.loc["start", "gap"] + 0.05, table
    assert table.loc["adapted", "top1"] >= table.loc["start", "top1"], table
    assert done.history[-1]["loss"] < done.history[0]["loss"], done.history


# --- the notebook -----------------------------------------------------------------------------

@pytest.mark.smoke
def test_adapt_notebook_runs_top_to_bottom_and_writes_its_files(tmp_path, demo_dir):
    from utils.dev.pipeline import DEMO_MODEL, execute_notebook
    from utils.places import kit_root

    run = tmp_path / "adapt"
    params = {"DATA_DIR": str(demo_dir), "RUN_DIR": str(run), **DEMO_MODEL, "EPOCHS": 2,
              "BATCH_SIZE": 16, "STEPS_PER_EPOCH": 2, "N_PROBE": 32, "OBJECTIVE": "byol"}
    executed = execute_notebook(kit_root() / "notebooks" / "04_adapt.ipynb", params,
                                tmp_path / "04_adapt.ipynb")
    cells = json.loads(executed.read_text())["cells"]
    assert not [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    config = json.loads((run / "config.json").read_text())
    assert config["objective"] == "byol" and config["img_size"] == 64
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and all(r["steps"] == 2 for r in history)
    for name in ("adapt.safetensors", "curves.png", "views.png", "agreement.csv"):
        assert (run / name).is_file(), name
    create_backbone("test_convnext", str(run / "adapt.safetensors"), 64)
