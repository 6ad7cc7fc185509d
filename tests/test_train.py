"""Fine-tuning engine: schedule, optimizer, seeded loaders, resume equivalence, gene-group
bookkeeping, clear errors, a short run that learns, and 05_train smoke runs in both group modes."""

import json
import math
import time
from dataclasses import fields, replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import blind_cv_score, shuffled_images_copy

from utils import loop, train, units
from utils.config import TrainConfig
from utils.data import PatchDataset, load_data
from utils.loop import make_loader, make_optimizer, make_scheduler, oom_error
from utils.models import load_unit_model, load_weights
from utils.units import predict


def write_gene_groups(path, genes, strategy="prefix"):
    """A gene_groups.csv grouping genes by name prefix (MT-, RP, the rest)."""
    names = pd.Series(genes)
    group = np.where(names.str.startswith("MT-"), "MT",
                     np.where(names.str.match(r"RP[LS]"), "RP", "other"))
    pd.DataFrame({"gene": genes, "group": group, "strategy": strategy}).to_csv(path, index=False)
    return path


class Killed(Exception):
    """Stands for the session dying mid-run."""


@pytest.fixture
def tiny(dacon_dir, tmp_path):
    """A finetune config on the tiny DACON folder (12 train rows, 4 genes) and its data."""
    cfg = TrainConfig(data_dir=str(dacon_dir), run_dir=str(tmp_path / "run"), recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=32, n_folds=2,
                      epochs=3, batch_size=4, patience=None, ema=0.9, tta=False,
                      alphas=(1.0, 100.0), cv="blocks")
    data = load_data(cfg.data_dir)
    return cfg, data, train.make_cv_folds(cfg, data)[0]


def test_warmup_then_cosine_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=3, total_steps=10)
    lrs = []
    for update in range(1, 11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_update(update)
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 0.05


@pytest.mark.parametrize("warmup, total", [(4, 30), (0, 12), (3, 3), (5, 6)])
def test_every_group_follows_warmup_cosine_at_its_own_rate(warmup, total):
    """timm's scheduler gives each parameter group (backbone, heads, layer-decayed layers) its
    own rate × (t+1)/(warmup+1) during warmup, then rate × ½(1 + cos(π·progress)) down to 0."""
    rates = [1e-4, 3e-4 * 0.65 ** 3, 1e-2]
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": r}
                           for r in rates])
    sched = make_scheduler(opt, warmup_steps=warmup, total_steps=total)
    for t in range(total + 5):
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        factor = ((t + 1) / (warmup + 1) if t < warmup
                  else 0.5 * (1 + math.cos(math.pi * progress)))
        got = [g["lr"] for g in opt.param_groups]
        np.testing.assert_allclose(got, [r * factor for r in rates], rtol=0, atol=1e-12)
        opt.step()
        sched.step_update(t + 1)


def test_optimizer_groups_learning_rates_and_weight_decay():
    from utils.models import ModelSpec, build_model, freeze_blocks

    model = build_model(ModelSpec("test_convnext", 32, [0, 1], {"all": [0, 1]}))
    frozen = freeze_blocks(model, 1)
    opt = make_optimizer(model, lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    by_name = {(g["name"], g["weight_decay"]): g for g in opt.param_groups}
    assert by_name[("heads", 0.05)]["lr"] == 1e-2 and by_name[("backbone", 0.05)]["lr"] == 1e-4
    assert all(p.ndim == 1 for g in opt.param_groups if g["weight_decay"] == 0
               for p in g["params"])
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    params = dict(model.backbone.named_parameters())
    assert not any(id(params[n]) in in_optimizer for n in frozen)


def test_layer_decay_slows_the_lower_backbone_layers():
    from utils.models import ModelSpec, build_model

    model = build_model(ModelSpec("test_convnext", 32, [0, 1], {"all": [0, 1]}))
    flat = make_optimizer(model, lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    opt = make_optimizer(model, lr=1e-3, head_lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    stem = model.backbone.stem[0].weight
    last = list(model.backbone.stages[-1].parameters())[0]
    assert lr_of[id(stem)] < lr_of[id(last)] <= 1e-3  # lower layers slower; the top at LR
    assert len({lr for g in opt.param_groups if g["name"] == "backbone" for lr in [g["lr"]]}) > 2
    assert {g["lr"] for g in opt.param_groups if g["name"] == "heads"} == {1e-2}
    count = [sum(len(g["params"]) for g in o.param_groups) for o in (flat, opt)]
    assert count[0] == count[1]  # the same parameters, only their rates differ


def test_mixup_blends_patches_and_profiles_with_one_weight():
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    y = torch.randn(4, 5)
    torch.manual_seed(1)
    mx, my = loop.mix_batch(x, y, 2.0)
    torch.manual_seed(1)  # the draws mix_batch makes from torch's seeded generator, in order
    lam = float(torch.distributions.Beta(2.0, 2.0).sample())
    order = torch.randperm(4)
    assert 0.05 < lam < 0.95 and not torch.equal(order, torch.arange(4))  # a real blend
    torch.testing.assert_close(mx, lam * x.float() + (1 - lam) * x.float()[order])
    torch.testing.assert_close(my, lam * y + (1 - lam) * y[order])  # same weight and partner
    torch.manual_seed(1)
    again = loop.mix_batch(x, y, 2.0)
    assert torch.equal(mx, again[0]) and torch.equal(my, again[1])  # seeded: resumable


def test_layer_decay_and_mixup_train_and_resume_alike(tiny, tmp_path, monkeypatch):
    cfg, data, folds = tiny
    cfg = replace(cfg, layer_decay=0.7, mixup=0.4, epochs=2)
    full = train.train(replace(cfg, run_dir=str(tmp_path / "full")), data, folds)
    calls, original = [], loop.train_epoch

    def killed_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", killed_in_second_epoch)
    with pytest.raises(Killed):
        train.train(cfg, data, folds)
    monkeypatch.setattr(loop, "train_epoch", original)
    resumed = train.train(cfg, data, folds)
    np.testing.assert_array_equal(resumed.oof, full.oof)
    assert np.isfinite(full.oof).all()


def _batches(seed, workers=0):
    from utils.augment import build_augment

    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
    dataset = PatchDataset(images, np.arange(10, dtype=np.float32)[:, None], None,
                           build_augment("flips"))
    loader = make_loader(dataset, 4, seed, workers, torch.device("cpu"))
    return [(x.numpy(), y.numpy()) for x, y in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_and_augmentations_are_fixed_by_the_seed(workers):
    first, again, other = _batches(1, workers), _batches(1, workers), _batches(2, workers)
    assert len(first) == 2  # the last incomplete batch is dropped (batch norm needs two)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xb) for (xa, _), (xb, _) in zip(first, other))


def test_out_of_memory_says_what_to_change(tmp_path):
    err = oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                    32, 224, tmp_path, resume=True)
    message = str(err)
    assert "BATCH_SIZE=32" in message and "IMG_SIZE" in message and "RESUME=True" in message


def test_out_of_memory_during_training_is_explained(tiny, monkeypatch):
    cfg, data, folds = tiny

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop, "train_epoch", boom)
    with pytest.raises(RuntimeError, match="lower BATCH_SIZE"):
        train.train(cfg, data, folds)


@pytest.mark.parametrize("patience", [None, 1])
def test_resumed_run_ends_as_an_uninterrupted_one(tiny, tmp_path, monkeypatch, patience):
    cfg, data, folds = tiny
    cfg = replace(cfg, patience=patience)
    full = train.train(replace(cfg, run_dir=str(tmp_path / "full")), data, folds)
    trained = {u: [r["epoch"] for r in run_history(full.path) if r["unit"] == u][-1]
               for u in ("fold0", "fold1")}  # PATIENCE may stop a unit before EPOCHS
    # die in fold0's last epoch (fold1 then trains from scratch), or in fold1's if fold0 has one
    kill_at = trained["fold0"] if trained["fold0"] > 1 else sum(trained.values())
    dying = "fold0" if kill_at == trained["fold0"] else "fold1"
    calls, original = [], loop.train_epoch

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:  # the epochs before are checkpointed, this one dies
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", killed)
    with pytest.raises(Killed):
        train.train(cfg, data, folds)
    assert (tmp_path / "run" / "checkpoints" / dying / "last.pt").is_file()
    killed_s = json.loads(
        (tmp_path / "run" / "checkpoints" / "elapsed.json").read_text())["seconds"]
    calls[:] = [0] * 10  # no more kills; count the epochs the resumed run trains
    start = time.perf_counter()
    resumed = train.train(cfg, data, folds)
    # elapsed_s counts the killed process's recorded time too, not only the last process
    assert resumed.config["elapsed_s"] >= killed_s + time.perf_counter() - start - 1
    calls[:] = calls[10:]
    # the dying epoch only, then (if fold0 died) fold1 from scratch
    assert len(calls) == 1 + (trained["fold1"] if dying == "fold0" else 0)
    np.testing.assert_array_equal(resumed.oof, full.oof)
    np.testing.assert_array_equal(resumed.test_pred, full.test_pred)
    keys = ("unit", "epoch", "loss", "val_score", "stop_score")
    strip = [[{k: row[k] for k in keys if k in row} for row in run_history(r.path)]
             for r in (full, resumed)]
    assert strip[0] == strip[1]
    assert not (tmp_path / "run" / "checkpoints" / dying / "last.pt").exists()


@pytest.mark.parametrize("patience", [None, 2])
def test_each_fold_is_scored_at_an_epoch_chosen_without_it(tiny, tmp_path, monkeypatch,
                                                          patience):
    """cv.json says which epoch every fold's score comes from and how it was chosen: with
    PATIENCE the best epoch of the unit's stopping rows (other folds' rows kept out of its
    training; checkable against history.json), without it the last epoch; the OOF rows are that
    epoch's predictions, and the test predictions use the all-folds epoch."""
    cfg, data, folds = tiny
    monkeypatch.setattr(train, "remove_epoch_weights", lambda folder: None)  # keep to check
    run = train.train(replace(cfg, epochs=3, patience=patience), data, folds)
    history = run_history(run.path)
    curves = {k: np.array([r["val_score"] for r in history if r["fold"] == k]) for k in (0, 1)}
    info = json.loads((run.path / "model.json").read_text())
    for k, parts in enumerate(run.cv["folds"]):
        rows_k = [r for r in history if r["fold"] == k]
        if patience:
            assert parts["selection"] == "stopping rows (nested)"
            assert parts["epoch"] == int(np.argmax([r["stop_score"] for r in rows_k]))
        else:
            assert parts["selection"] == "last epoch" and parts["epoch"] == 3
            assert all("stop_score" not in r for r in rows_k)
        assert parts["best_epoch_on_fold"] == [int(np.argmax(curves[k]))]
        model = load_unit_model(run.path, f"fold{k}")
        load_weights(model, units.epoch_weights(run.path / "checkpoints" / f"fold{k}",
                                                      parts["epoch"]))
        rows = np.flatnonzero(folds == k)
        images = np.stack([np.asarray(__import__("PIL.Image").Image.open(p))
                           for p in np.asarray(data.image_paths("train"))[rows]])
        np.testing.assert_allclose(units.to_original(model, predict(model, images)),
                                   run.oof[rows], rtol=1e-4, atol=1e-4)
    common = min(len(curves[0]), len(curves[1]))
    test_epoch = int(np.argmax(curves[0][:common] + curves[1][:common]))
    assert {u["epoch"] for u in info["units"].values()} == {test_epoch}
    assert "mean_best_score_on_fold" in run.cv["optimistic"]


def test_stopping_rows_come_from_the_other_folds_and_stop_the_unit_alone():
    folds = np.repeat([0, 1, 2], [10, 20, 6])
    groups = dict.fromkeys(range(3), {"all": np.arange(2)})
    units = train.plan_units(folds, groups, "heads", stopping_fraction=0.15)
    for unit in units:
        assert not np.isin(unit.stop_idx, unit.val_idx).any()  # never the scored fold
        assert not np.isin(unit.stop_idx, unit.train_idx).any()  # kept out of training
        assert len(unit.stop_idx) + len(unit.train_idx) == (folds != unit.fold).sum()
    np.testing.assert_array_equal(units[0].stop_idx, [27, 28, 29, 34, 35])  # each fold's last
    assert not len(train.plan_units(folds, groups, "heads")[0].stop_idx)  # no PATIENCE
    history = [{"epoch": e, "val_score": v, "stop_score": s}
               for e, (v, s) in enumerate([(0.1, 0.2), (0.9, 0.5), (0.95, 0.4), (0.99, 0.3)])]
    # PATIENCE counts epochs past the best epoch of the unit's own stopping rows (1), whatever
    # its validation fold says (still rising)
    assert train.stop_epoch(history, epochs=10, patience=2) == 3
    assert train.stop_epoch(history[:2], epochs=10, patience=2) == 3
    assert train.stop_epoch(history, epochs=10, patience=None) == 10
    assert train.stop_epoch([], epochs=10, patience=2) == 10


def test_epoch_choice_reads_only_the_units_own_stopping_rows():
    units = [train.Unit(f"fold{k}", k, k, np.array([0]), np.array([1]), np.arange(2),
                        {"all": np.arange(2)}, stop_idx=np.array([2])) for k in range(3)]
    val = {"fold0": [0.1, 0.5, 0.2], "fold1": [0.1, 0.2, 0.9], "fold2": [0.3, 0.4, 0.35]}
    stop = {"fold0": [0.1, 0.2, 0.3], "fold1": [0.5, 0.1, 0.1], "fold2": [0.2, 0.6]}
    histories = {n: [{"epoch": e, "val_score": v, "stop_score": s}
                     for e, (v, s) in enumerate(zip(val[n], stop[n]))] for n in val}
    choice = train.choose_epochs(units, histories)
    assert [choice[f"fold{k}"]["oof_epoch"] for k in range(3)] == [2, 0, 1]
    assert {c["test_epoch"] for c in choice.values()} == {1}  # all folds' mean over 2 epochs
    assert choice["fold1"]["best_epoch_on_fold"] == 2
    assert {c["selection"] for c in choice.values()} == {"stopping rows (nested)"}
    plain = {n: [{k: r[k] for k in ("epoch", "val_score")} for r in h]
             for n, h in histories.items()}  # no PATIENCE: each unit's last epoch
    assert [c["oof_epoch"] for c in train.choose_epochs(units, plain).values()] == [2, 2, 1]


def _finetune_oof(cfg, data, folds, tmp_path):
    """OOF predictions of a fine-tuning run on targets y, each run in its own folder."""
    def run(y):
        target = replace(data, y=np.asarray(y, dtype=data.y.dtype))
        folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        return train.train(replace(cfg, run_dir=str(folder)), target, folds).oof
    return run


@pytest.mark.parametrize("patience", [None, 1])
def test_finetune_oof_of_a_fold_ignores_its_labels(tiny, tmp_path, patience):
    """Fine-tuning with and without PATIENCE passes the label-invariance check: replacing fold
    k's labels moves the other fold's predictions, never fold k's."""
    from conftest import assert_label_invariant

    cfg, data, folds = tiny
    cfg = replace(cfg, patience=patience, epochs=3)
    (tmp_path / "runs").mkdir()
    assert_label_invariant(_finetune_oof(cfg, data, folds, tmp_path / "runs"), data.y, folds)


def test_finetune_with_groups_made_per_fold_ignores_each_folds_labels(tiny, tmp_path):
    from conftest import assert_label_invariant

    from utils.config import GeneClusteringConfig
    from utils.files import write_json
    from utils.genes import grouping_settings

    cfg, data, folds = tiny
    write_json(tmp_path / "gene_groups.json", grouping_settings(GeneClusteringConfig(
        strategies=["correlation"], n_modules=2, min_group_size=1)))
    csv = write_gene_groups(tmp_path / "gene_groups.csv", data.genes, strategy="correlation")
    cfg = replace(cfg, group_strategy="correlation", gene_groups=str(csv), patience=1, epochs=2)
    (tmp_path / "runs").mkdir()
    assert_label_invariant(_finetune_oof(cfg, data, folds, tmp_path / "runs"), data.y, folds)


def test_a_planted_epoch_leak_is_caught(tiny, tmp_path, monkeypatch):
    """A choose_epochs that takes each fold's OOF epoch from its own validation curve (what
    the kit promises never to do) fails the label-invariance check."""
    from conftest import assert_label_invariant

    cfg, data, folds = tiny
    honest = train.choose_epochs

    def own_curve(units, histories):
        choice = honest(units, histories)
        for unit in units:
            choice[unit.name]["oof_epoch"] = choice[unit.name]["best_epoch_on_fold"]
        return choice

    monkeypatch.setattr(train, "choose_epochs", own_curve)
    (tmp_path / "runs").mkdir()
    with pytest.raises(AssertionError, match="its own labels"):
        assert_label_invariant(_finetune_oof(replace(cfg, epochs=3), data, folds,
                                             tmp_path / "runs"), data.y, folds)


def run_history(path):
    from utils.runs import load_history

    return load_history(path)


def test_checkpoints_of_other_settings_are_not_resumed(tiny, monkeypatch):
    cfg, data, folds = tiny
    monkeypatch.setattr(loop, "train_epoch", lambda *a, **k: (_ for _ in ()).throw(
        Killed))
    with pytest.raises(Killed):
        train.train(cfg, data, folds)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="RESUME=False"):
        train.train(replace(cfg, lr=1e-3), data, folds)
    run = train.train(replace(cfg, lr=1e-3, resume=False, epochs=1), data, folds)
    assert run.config["lr"] == 1e-3


@pytest.mark.parametrize("mode", ["heads", "models"])
def test_gene_groups_as_heads_or_models(tiny, tmp_path, mode):
    cfg, data, folds = tiny
    csv = write_gene_groups(tmp_path / "gene_groups.csv", data.genes)
    cfg = replace(cfg, group_strategy="prefix", gene_groups=str(csv), group_mode=mode, epochs=1)
    run = train.train(cfg, data, folds)
    assert run.oof.shape == data.y.shape and np.isfinite(run.oof).all()
    model_info = json.loads((run.path / "model.json").read_text())
    expected = ["fold0", "fold1"] if mode == "heads" else \
        ["fold0-MT", "fold0-other", "fold1-MT", "fold1-other"]
    assert list(model_info["units"]) == expected and model_info["group_mode"] == mode
    assert run.config["details"]["group_mode"] == mode and run.config["details"]["n_groups"] == 2
    unit = expected[-1]
    spec = model_info["units"][unit]["spec"]
    if mode == "heads":
        assert set(spec["heads"]) == {"MT", "other"} and spec["genes"] == [0, 1, 2, 3]
    else:
        assert spec["genes"] == [0, 1, 2] and list(spec["heads"]) == ["other"]
    model = load_unit_model(run.path, unit)  # what Grad-CAM rebuilds
    images = np.stack([np.asarray(__import__("PIL.Image").Image.open(p))
                       for p in data.image_paths("test")])
    z = predict(model, images)
    fold1_test = units.load_result(run.path / "checkpoints" / unit / "result.npz")["test_pred"]
    np.testing.assert_allclose(units.to_original(model, z), fold1_test, rtol=1e-4, atol=1e-4)


def test_every_config_field_is_a_parameter_of_the_notebook(tmp_path):
    """A field the cell does not show is still a parameter: one more UPPER_CASE line in the
    cell (a notebook global) or a papermill -p sets it."""
    from utils.config import from_params

    cell = {name for names in TrainConfig.CELL.values() for name in names}
    rare = [f for f in fields(TrainConfig) if f.name not in cell]
    assert rare and all(f.metadata["doc"] for f in rare)
    cfg = from_params(TrainConfig, {"ALPHAS": [3.0], "STAIN_NORM": "macenko", "DEVICES": 1})
    assert (cfg.alphas, cfg.stain_norm, cfg.devices) == ((3.0,), "macenko", 1)


@pytest.mark.parametrize("params, message", [
    ({"LAYER_DECAY": 1.5}, "LAYER_DECAY"), ({"MIXUP": 0}, "MIXUP"),
    ({"EPOCHS": 0}, "EPOCHS"), ({"LR": 0.0}, "LR"), ({"EMA": 1.5}, "EMA"),
    ({"GROUP_MODE": "trees"}, "GROUP_MODE"), ({"GROUP_MODE": "models"}, "GROUP_STRATEGY"),
    ({"TARGET_PCA": 0}, "TARGET_PCA"), ({"LOSS": {"mse": 1, "huber": 1}}, "LOSS"),
    ({"RECIPE": "finetune", "AUGMENT": "nope"}, "AUGMENT"), ({"HEAD_INIT": "zeros"}, "HEAD_INIT"),
])
def test_bad_finetune_parameters_are_named(params, message):
    from utils.config import from_params

    with pytest.raises(ValueError, match=message):
        from_params(TrainConfig, params)


def test_short_cpu_run_on_the_demo_set_learns(tmp_path):
    from utils.dev.demo import write_demo

    data_dir = write_demo(tmp_path / "demo", n_train=160, n_test=20, n_genes=100, image_size=64,
                          seed=3)
    cfg = TrainConfig(data_dir=str(data_dir), run_dir=str(tmp_path / "run"), recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=64, n_folds=2,
                      epochs=3, batch_size=16, lr=1e-3, head_lr=3e-3, patience=None,
                      head_init="random", tta=False)
    data = load_data(cfg.data_dir)
    folds, _ = train.make_cv_folds(cfg, data)
    run = train.train(cfg, data, folds)
    # image-blind models: the mean profile plus noise, and the same recipe on shuffled patches
    shuffled_dir = shuffled_images_copy(data_dir, tmp_path / "shuffled")
    shuffled = train.train(replace(cfg, data_dir=str(shuffled_dir),
                                   run_dir=str(tmp_path / "shuffled_run")),
                           load_data(shuffled_dir), folds)
    blind = max(blind_cv_score(data.y, folds), shuffled.cv["overall"]["score"])
    assert run.cv["overall"]["score"] > blind + 0.05, (run.cv["overall"], blind)
    history = run_history(run.path)
    assert all(max(r["val_score"] for r in history if r["unit"] == u and r["epoch"] > 0)
               > next(r["val_score"] for r in history if r["unit"] == u and r["epoch"] == 0)
               for u in ("fold0", "fold1"))


@pytest.mark.smoke
def test_pipeline_finetune_run_is_complete(demo_pipeline):
    from utils.runs import load_run

    run = load_run(demo_pipeline["runs"] / "finetune")
    last = run.cv["n_folds"] - 1
    assert run.config["recipe"] == "finetune" and run.cv["splitter"] == "slices"
    assert 0.0 < run.cv["overall"]["score"] < 1.0
    assert all(f["selection"] in ("last epoch", "stopping rows (nested)")
               for f in run.cv["folds"])
    for name in ("model.json", "history.json", "curves.png", f"weights/fold{last}.safetensors"):
        assert (run.path / name).is_file(), name
    assert not list((run.path / "checkpoints").rglob("epoch*.safetensors"))  # cleaned up


@pytest.mark.smoke
@pytest.mark.parametrize("mode", ["heads", "models"])
def test_train_notebook_finetunes_in_both_group_modes(demo_pipeline, tmp_path, mode):
    from utils.dev.pipeline import DEMO_MODEL, execute_notebook, list_notebooks
    from utils.runs import load_run

    data = load_data(demo_pipeline["data"])
    csv = write_gene_groups(tmp_path / "gene_groups.csv", data.genes)
    notebook = next(p for p in list_notebooks() if p.stem == "05_train")
    params = {"DATA_DIR": str(demo_pipeline["data"]), "RUN_DIR": str(tmp_path / mode),
              "RECIPE": "finetune", **DEMO_MODEL, "TTA": False, "CV": "blocks", "N_FOLDS": 2,
              "EPOCHS": 1, "BATCH_SIZE": 32, "GROUP_STRATEGY": "prefix", "GENE_GROUPS": str(csv),
              "GROUP_MODE": mode}
    if mode == "heads":  # the heads read cpu_best's feature set: every stage, two crops
        params.update(FEATURE_STAGES="all", FEATURE_CROPS=[1.0, 0.5])
    execute_notebook(notebook, params, tmp_path / f"05_{mode}.ipynb")
    run = load_run(tmp_path / mode)
    assert run.config["group_mode"] == mode and run.config["details"]["n_groups"] == 3
    spec = json.loads((run.path / "model.json").read_text())["units"]["fold0"]["spec"] \
        if mode == "heads" else None
    assert spec is None or (spec["stages"] == "all" and spec["crops"] == [1.0, 0.5])
    assert run.oof.shape == data.y.shape and 0.0 < run.cv["overall"]["score"] < 1.0
    n_weights = 2 if mode == "heads" else 2 * 3
    assert len(list((run.path / "weights").glob("*.safetensors"))) == n_weights


def test_groups_that_read_targets_are_made_per_fold_from_its_training_rows(tiny, tmp_path):
    """Gene groups of a GROUP_STRATEGY that reads the targets (here `correlation`) are recomputed
    on each fold's training rows: changing a fold's own targets cannot change its groups."""
    from utils.config import GeneClusteringConfig
    from utils.files import write_json
    from utils.genes import grouping_settings, groups_on_rows

    cfg, data, folds = tiny
    settings = grouping_settings(GeneClusteringConfig(strategies=["correlation", "prefix"],
                                                      n_modules=2, min_group_size=1))
    csv = write_gene_groups(tmp_path / "gene_groups.csv", data.genes, strategy="correlation")
    write_json(tmp_path / "gene_groups.json", settings)
    cfg = replace(cfg, group_strategy="correlation", gene_groups=str(csv))
    by_fold = train.resolve_groups(cfg, data, folds)
    for k in (0, 1):
        expected = groups_on_rows(settings["correlation"], "correlation", data.genes,
                                  data.y[folds != k])
        assert {n: c.tolist() for n, c in by_fold[k].items()} == \
            {n: c.tolist() for n, c in expected.items()}
    scrambled = replace(data, y=data.y.copy())
    scrambled.y[folds == 0] = np.random.default_rng(0).permutation(scrambled.y[folds == 0], 1)
    again = train.resolve_groups(cfg, scrambled, folds)
    assert {n: c.tolist() for n, c in again[0].items()} == \
        {n: c.tolist() for n, c in by_fold[0].items()}
    # a strategy that reads no targets is taken from the file, the same for every fold
    prefix = train.resolve_groups(replace(cfg, group_strategy="prefix", gene_groups=str(
        write_gene_groups(tmp_path / "p.csv", data.genes))), data, folds)
    assert prefix[0] is prefix[1]


def test_two_processes_stop_where_one_does(tiny, tmp_path):
    """With PATIENCE, process 0 scores the stopping rows and decides for every process of a
    data-parallel run (stop_epoch broadcasts it): two gloo processes stop each unit at the
    epoch one process does, with the same predictions."""
    cfg, data, folds = tiny
    cfg = replace(cfg, patience=1, epochs=3, augment="none", devices=1)
    one = train.train(cfg, data, folds)
    two = train.train(replace(cfg, run_dir=str(tmp_path / "two"), devices=2), data, folds)
    epochs = [[(r["unit"], r["epoch"]) for r in run_history(run.path)] for run in (one, two)]
    assert epochs[0] == epochs[1]
    np.testing.assert_allclose(two.oof, one.oof, rtol=1e-3, atol=1e-3)  # float noise of DDP
