"""Hostile and careless files, second pass: the kit deletes only what it wrote, runs no code from
a weights file, trains on no weights that loaded nothing, parses every parameter by its type,
never overwrites a run's files, keeps a finished run until its replacement is complete, writes
a run folder under a lock, names every error, checks images before hashing them, fits SMOKE's
size to the model, and warns once. One test per item of the list."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SIZE, make_dacon, write_png

from utils import train
from utils.config import SubmitConfig, TrainConfig, from_params
from utils.cv import score_folds
from utils.data import DataError, DataWarning, ImageConversionWarning, load_data
from utils.files import InputOutputError, WriteError
from utils.runs import (
    UnsafeFileError,
    is_complete,
    load_run,
    prepare_checkpoints,
    save_run,
    select_runs,
)

KIT_ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _save(folder, data=None, seed=0, n=12, g=4, n_test=5, n_folds=3, oof=None):
    """A finished run folder (of `data` when given: its fingerprint, rows and genes)."""
    rng = np.random.default_rng(seed)
    if data is not None:
        n, g, n_test = len(data.train), len(data.genes), len(data.test)
    y = data.y if data is not None else rng.random((n, g))
    folds = np.arange(n) * n_folds // n
    oof = rng.random((n, g)) if oof is None else oof
    config = {"recipe": "ridge", "seed": seed,
              "data_fingerprint": data.fingerprint if data is not None else None}
    return save_run(folder, config, folds, oof, rng.random((n_test, g)),
                    score_folds(y, rng.random((n, g)), folds, "blocks"))


# --- 1: the kit deletes only what it wrote ----------------------------------------------------

def test_1_clearing_checkpoints_deletes_only_the_kits_files(tmp_path):
    # the README's bundle layout with RUN_DIR at the kit's root: the user's weight file survives
    kit = tmp_path / "mai-kit"
    user_weights = kit / "weights" / "tf_efficientnet_lite0.safetensors"
    user_weights.parent.mkdir(parents=True)
    user_weights.write_bytes(b"the user's weights")
    (kit / "README.md").write_text("# the kit")
    with pytest.raises(FileExistsError, match=r"README\.md") as err:
        prepare_checkpoints(kit, {"a": 1}, resume=False)
    assert "tf_efficientnet_lite0.safetensors" in str(err.value)
    assert user_weights.read_bytes() == b"the user's weights"
    # a run folder of the kit: its own checkpoints and weights are cleared, nothing else is
    run = tmp_path / "run"
    prepare_checkpoints(run, {"a": 1}, resume=True)
    (run / "checkpoints" / "fold0").mkdir()
    (run / "checkpoints" / "fold0" / "epoch1.safetensors").write_bytes(b"kit")
    (run / "weights").mkdir()
    (run / "weights" / "fold0.safetensors").write_bytes(b"kit")
    prepare_checkpoints(run, {"a": 2}, resume=False)
    assert not (run / "weights" / "fold0.safetensors").exists()
    assert not (run / "checkpoints" / "fold0").exists()
    (run / "weights").mkdir()
    (run / "weights" / "mine.safetensors").write_bytes(b"user")
    with pytest.raises(FileExistsError, match="mine.safetensors"):
        prepare_checkpoints(run, {"a": 3}, resume=False)
    assert (run / "weights" / "mine.safetensors").read_bytes() == b"user"


# --- 2: parameters parsed strictly by type ----------------------------------------------------

@pytest.mark.parametrize("text,value", [("false", False), ("no", False), ("0", False),
                                        ("False", False), ("off", False), ("true", True),
                                        ("yes", True), ("1", True), ("TRUE", True)])
def test_2_parameters_are_parsed_by_type_from_any_spelling(text, value):
    cfg = from_params(TrainConfig, {"OVERWRITE": text, "RESUME": text, "CENTRE_FEATURES": text,
                                    "N_FOLDS": "5", "IMG_SIZE": "None", "PCA_DIM": "null",
                                    "ALPHAS": "[1, 10.5]", "LR": "1e-3", "PRETRAINED": text})
    assert (cfg.overwrite, cfg.resume, cfg.centre_features, cfg.pretrained) == (value,) * 4
    assert cfg.n_folds == 5 and cfg.img_size is None and cfg.pca_dim is None
    assert cfg.alphas == (1.0, 10.5) and cfg.lr == 1e-3
    assert from_params(SubmitConfig, {"STRICT": text, "SMOKE": "no"}).strict is value
    assert from_params(TrainConfig, {"PRETRAINED": "w/x.safetensors"}).pretrained == \
        "w/x.safetensors"
    for params, name in (({"OVERWRITE": "maybe"}, "OVERWRITE"), ({"N_FOLDS": "four"}, "N_FOLDS"),
                         ({"N_FOLDS": True}, "N_FOLDS"), ({"N_FOLDS": 2.5}, "N_FOLDS"),
                         ({"SMOKE": 2}, "SMOKE"), ({"LR": "fast"}, "LR")):
        with pytest.raises(ValueError, match=name) as err:
            from_params(TrainConfig, params)
        assert repr(next(iter(params.values()))) in str(err.value)


# --- 3: weights files never run code ----------------------------------------------------------

def test_3_a_pickled_weights_file_is_refused_and_runs_nothing(tmp_path):
    from utils.models import create_backbone

    marker, path = tmp_path / "marker", tmp_path / "planted.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    with pytest.raises(UnsafeFileError, match=re.escape(str(path))):
        create_backbone("test_efficientnet", pretrained=str(path))
    assert not marker.exists()
    # the minimum timm is past the versions whose loader unpickles .pth files
    spec = next(line for line in (KIT_ROOT / "requirements.txt").read_text().splitlines()
                if line.startswith("timm"))
    minimum = tuple(int(p) for p in spec.split(">=")[1].split(".")[:3])
    assert minimum >= (1, 0, 26), spec


# --- 4: a weights file must fill the backbone --------------------------------------------------

def test_4_weights_that_match_nothing_stop_and_common_prefixes_are_stripped(tmp_path, capsys):
    from safetensors.torch import save_file

    from utils.models import WeightsError, create_backbone

    source = create_backbone("test_efficientnet", pretrained=False, seed=1)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    prefixed = tmp_path / "ssl.safetensors"
    save_file({f"module.backbone.{k}": v for k, v in state.items()}, str(prefixed))
    model = create_backbone("test_efficientnet", pretrained=str(prefixed), seed=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert "module.backbone." in capsys.readouterr().out  # the kit says what it stripped
    alien = tmp_path / "alien.safetensors"
    save_file({f"encoder.{k}": v for k, v in state.items()}, str(alien))
    with pytest.raises(WeightsError, match=r"0 of \d+ .*encoder\."):
        create_backbone("test_efficientnet", pretrained=str(alien))
    half = tmp_path / "half.pt"
    keys = sorted(state)
    torch.save({k: state[k] for k in keys[: len(keys) // 2]}, half)
    with pytest.raises(WeightsError, match="half.pt"):
        create_backbone("test_efficientnet", pretrained=str(half))


# --- 5: outputs never land on inputs or run files ---------------------------------------------

def test_5_submission_may_not_overwrite_a_runs_file_or_an_input(tmp_path, dacon_dir):
    from utils import submit

    data = load_data(dacon_dir)
    run = _save(tmp_path / "runs" / "a", data)
    groups = tmp_path / "gene_groups.csv"
    groups.write_text("gene,group,strategy\n")
    for target in (run / "cv.json", run / "new.csv", groups):
        cfg = SubmitConfig(data_dir=str(dacon_dir), runs=(str(run),), submission=str(target),
                           gene_groups=str(groups))
        with pytest.raises(InputOutputError, match="SUBMISSION"):
            submit.load_runs(cfg, data)
    assert load_run(run).cv["n_folds"] == 3


# --- 6: an interrupted OVERWRITE keeps the old run and its own progress -----------------------

class Killed(Exception):
    """Stands for the session dying mid-run."""


def test_6_an_interrupted_overwrite_keeps_the_old_run_and_resumes(dacon_dir, tmp_path,
                                                                   monkeypatch):
    cfg = TrainConfig(data_dir=str(dacon_dir), run_dir=str(tmp_path / "run"), recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=32, n_folds=2,
                      epochs=1, batch_size=4, patience=None, tta=False, alphas=(1.0, 100.0),
                      cv="blocks")
    data = load_data(cfg.data_dir)
    folds = train.make_cv_folds(cfg, data)[0]
    old = train.train(cfg, data, folds)
    again = replace(cfg, overwrite=True, lr=1e-3)
    real, trained = train.train_unit, []

    def dies_on_the_second_unit(unit, *args, **kwargs):
        if unit.name == "fold1":
            raise Killed
        return real(unit, *args, **kwargs)

    monkeypatch.setattr(train, "train_unit", dies_on_the_second_unit)
    with pytest.raises(Killed):
        train.train(again, data, folds)
    kept = load_run(cfg.run_dir)  # the old run is still the finished one, weights and all
    np.testing.assert_array_equal(kept.oof, old.oof)
    assert (Path(cfg.run_dir) / "weights" / "fold0.safetensors").is_file()
    real_setup = train.setup_unit
    monkeypatch.setattr(train, "train_unit", real)
    monkeypatch.setattr(train, "setup_unit",
                        lambda unit, *a, **k: trained.append(unit.name) or real_setup(unit, *a,
                                                                                     **k))
    new = train.train(again, data, folds)
    assert trained == ["fold1"]  # fold0's progress was resumed, not wiped
    assert new.config["lr"] == 1e-3 and is_complete(cfg.run_dir)
    assert not any(p.name.startswith(".next") for p in Path(cfg.run_dir).iterdir())


# --- 7: one writer at a time; a completion record written last --------------------------------

def test_7_a_run_folder_is_written_under_a_lock_and_checked_against_its_record(tmp_path):
    from utils.runs import run_lock

    folder = tmp_path / "run"
    done = threading.Event()
    with run_lock(folder):
        writer = threading.Thread(target=lambda: (_save(folder), done.set()))
        writer.start()
        time.sleep(0.5)
        assert not done.is_set() and not is_complete(folder)  # the second writer waits
    writer.join(30)
    assert done.is_set() and is_complete(folder)
    # another writer's 4-fold folds.npy beside this run's 3-fold cv.json: refused, named
    np.save(folder / "folds.npy", np.arange(12) * 4 // 12)
    with pytest.raises(ValueError, match="folds.npy"):
        load_run(folder)


# --- 8: 07 leaves SMOKE runs alone ------------------------------------------------------------

def test_8_finding_runs_skips_smoke_runs_unless_asked(tmp_path):
    root = tmp_path / "runs"
    _save(root / "ridge")
    _save(root / "smoke" / "ridge")
    assert select_runs([], root) == [root / "ridge"]
    assert select_runs([], root / "smoke") == [root / "smoke" / "ridge"]


# --- 9: raw errors that named nothing ---------------------------------------------------------

def test_9_every_remaining_fault_is_a_named_error(tmp_path, dacon_dir, monkeypatch):
    from safetensors.torch import save_file

    from utils import files, submit
    from utils.models import WeightsError, create_backbone
    from utils.runs import MARKER

    # a full disk while numpy writes an .npy (its error carries no errno)
    def numpy_full(file, array, *args, **kwargs):
        raise OSError("8000 requested and 4096 written")

    with monkeypatch.context() as mp:
        mp.setattr(np, "save", numpy_full)
        mp.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
        with pytest.raises(WriteError, match="disk is full") as err:
            files.save_npy(tmp_path / "x.npy", np.zeros(1000))
        assert "x.npy" in str(err.value)
    # a corrupt or NaN oof.npy in one of several runs
    data = load_data(dacon_dir)
    good, bad = _save(tmp_path / "runs" / "good", data), _save(tmp_path / "runs" / "bad", data)
    (bad / "oof.npy").write_bytes(b"\x93NUMPY garbage")
    for name in ("done.json", MARKER):  # a folder of an older kit: no record
        (bad / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"bad.oof\.npy"):
        submit.load_runs(SubmitConfig(runs=(str(good), str(bad))), data)
    nan = np.full((len(data.train), len(data.genes)), np.nan)
    _save(bad, data, oof=nan)
    with pytest.raises(ValueError, match=r"oof\.npy.*NaN"):
        load_run(bad)
    # a folder as SUBMISSION
    (tmp_path / "subs").mkdir()
    with pytest.raises(ValueError, match=r"SUBMISSION.*folder"):
        submit.load_runs(SubmitConfig(runs=(str(good),), submission=str(tmp_path / "subs")),
                         data)
    # truncated and wrong weights
    source = create_backbone("test_efficientnet", pretrained=False)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    whole = tmp_path / "w.safetensors"
    save_file(state, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        create_backbone("test_efficientnet", pretrained=str(cut))
    name = next(k for k, v in state.items() if v.ndim == 4)
    wrong = tmp_path / "wrong.safetensors"
    save_file({**state, name: torch.zeros(1, 1, 1, 1)}, str(wrong))
    with pytest.raises(WeightsError, match=re.escape(name)):
        create_backbone("test_efficientnet", pretrained=str(wrong))
    # ALPHAS as text, [] or [-1]; SEED as text
    for params, param in (({"ALPHAS": "many"}, "ALPHAS"), ({"ALPHAS": []}, "ALPHAS"),
                          ({"ALPHAS": [-1]}, "ALPHAS"), ({"SEED": "lucky"}, "SEED")):
        with pytest.raises(ValueError, match=param):
            from_params(TrainConfig, params)
    # three training rows
    tiny = make_dacon(tmp_path / "three", n_train=3)
    cfg = TrainConfig(data_dir=str(tiny), cv="blocks", n_folds=3)
    with pytest.raises(DataError, match=r"train\.csv.*3 rows"):
        train.make_cv_folds(cfg, load_data(tiny))


# --- 10: cheaper and stricter image checks ----------------------------------------------------

def test_10_images_are_checked_before_hashing_and_swaps_are_seen(tmp_path, monkeypatch):
    from utils import data as data_module
    from utils.files import run_dir

    root = make_dacon(tmp_path)
    # a swapped image with the same size and mtime is seen
    before = load_data(root).fingerprint["train_images"]
    png = root / "train" / "TRAIN_0001.png"
    stat, swapped = png.stat(), bytearray(png.read_bytes())
    swapped[-20] ^= 0xFF  # other bytes, same size; the same mtime below
    png.write_bytes(bytes(swapped))
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert png.stat().st_size == stat.st_size
    assert load_data(root).fingerprint["train_images"] != before
    # not an image: refused before a byte of it is hashed, and files are hashed streamed
    (root / "train" / "TRAIN_0003.png").write_bytes(b"\0" * 100_000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read whole: {self}"))
    with pytest.raises(DataError, match="TRAIN_0003.png.*not a PNG"):
        load_data(root).fingerprint  # noqa: B018
    write_png(root / "train" / "TRAIN_0003.png", np.full((*SIZE, 3), 9))
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3))
    write_png(root / "train" / "TRAIN_0004.png", big)  # ~12 kB, the others under 1 kB
    monkeypatch.setattr(data_module, "MAX_IMAGE_BYTES", 5000)
    with pytest.raises(DataError, match="TRAIN_0004.png.*MAX_IMAGE_BYTES"):
        load_data(root).fingerprint  # noqa: B018
    monkeypatch.undo()
    # absolute image paths outside DATA_DIR are named; so is a RUN_DIR inside DATA_DIR
    outside = write_png(tmp_path / "elsewhere" / "x.png", np.full((*SIZE, 3), 3))
    frame = pd.read_csv(root / "train.csv", dtype={"ID": str})
    frame.loc[0, "path"] = str(outside)
    frame.to_csv(root / "train.csv", index=False)
    with pytest.warns(DataWarning, match=re.escape(str(outside))):
        load_data(root)
    with pytest.warns(UserWarning, match=r"RUN_DIR=.*inside the data folder"):
        run_dir(root / "runs" / "ridge")


# --- 11: SMOKE's size fits every hub model ----------------------------------------------------

def test_11_smoke_size_is_a_multiple_of_every_hub_models_patch():
    from utils.choices import SMOKE_PX
    from utils.models import HUB_MODELS, create_backbone, data_config

    cfg = TrainConfig(smoke=True)
    for name in HUB_MODELS:  # on the meta device: shapes only, no memory, no weights
        with torch.device("meta"):
            model = create_backbone(name, pretrained=False, img_size=cfg.img_size)
            size = data_config(model, cfg.img_size)["input_size"]
            patch = model.patch_embed.patch_size[0]
            assert size[1] % patch == 0 and size[1] <= SMOKE_PX, (name, size)
            model(torch.empty(1, *size))  # the model accepts it


# --- 12: cosmetic -----------------------------------------------------------------------------

def test_12_conversion_warns_once_per_call_and_smoke_has_no_performance_warning(tmp_path):
    from utils.duplicates import find_duplicates

    genes = tuple(f"GENE{i}" for i in range(300))
    root = make_dacon(tmp_path, genes=genes)
    write_png(root / "train" / "TRAIN_0003.png", np.full(SIZE, 9))  # greyscale
    shutil.copy(root / "train" / "TRAIN_0003.png", root / "train" / "TRAIN_0004.png")
    data = load_data(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        find_duplicates(data)
        load_data(root, smoke=True)
    train_warnings = [w for w in caught if issubclass(w.category, ImageConversionWarning)
                      and str(w.message).startswith("train")]
    assert len(train_warnings) == 1, [str(w.message) for w in train_warnings]



def test_5_a_run_folder_may_not_hold_its_own_inputs(tmp_path, dacon_dir):
    data = load_data(dacon_dir)
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "fold0.safetensors").write_bytes(b"kit")  # an earlier run's weights
    cfg = TrainConfig(data_dir=str(dacon_dir), run_dir=str(run), recipe="finetune",
                      pretrained=str(run / "weights" / "fold0.safetensors"), resume=False)
    with pytest.raises(InputOutputError, match="PRETRAINED"):
        train.train(cfg, data, np.arange(12) % 3)
    assert (run / "weights" / "fold0.safetensors").read_bytes() == b"kit"
