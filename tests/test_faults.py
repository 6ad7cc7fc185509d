"""Issue 15's faults: a process SIGKILLed while it builds the image cache, extracts features,
fine-tunes or writes the submission; the rerun ends as an uninterrupted run, and nothing
half-written is ever read as complete. Children are real subprocesses that kill themselves at
a chosen point (a wrapped kit function), on the tiny DACON folder of conftest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KIT_ROOT, make_dacon

from utils.data import load_data, load_images
from utils.files import cached_array, npy_is_complete, save_npy

KILL = "import os, signal\ndef die(): os.kill(os.getpid(), signal.SIGKILL)\n"


def run_child(code: str, cache: Path, expect_killed: bool = True, timeout: float = 120):
    """Run `code` in a fresh Python (kit importable, caches under `cache`); its output."""
    env = {**os.environ, "KIT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(KIT_ROOT)}
    done = subprocess.run([sys.executable, "-c", KILL + textwrap.dedent(code)], cwd=KIT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if expect_killed:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


@pytest.fixture
def root(tmp_path) -> Path:
    return make_dacon(tmp_path, n_train=40, n_test=8)


# --- image cache ------------------------------------------------------------------------------

def test_killed_image_cache_build_is_rebuilt_identical(root, tmp_path):
    reference = np.array(load_images(load_data(root), "train", cache_dir=tmp_path / "ref"))
    cache = tmp_path / "cache"
    run_child(f"""
        import utils.data as d
        real, calls = d.decode_image, []
        def decode(*args):
            calls.append(1)
            if len(calls) == 20:
                die()
            return real(*args)
        d.decode_image = decode
        d.load_images(d.load_data({str(root)!r}), "train", cache_dir={str(cache)!r}, workers=1)
    """, cache)
    assert not (cache / "train_images.npy").exists() and not (cache / "train_images.json").exists()
    assert leftovers(cache)  # the killed writer's temporary file, never renamed into place
    rebuilt = load_images(load_data(root), "train", cache_dir=cache)
    np.testing.assert_array_equal(rebuilt, reference)
    assert leftovers(cache) == []


def test_killed_before_the_stamp_is_rebuilt(root, tmp_path):
    cache = tmp_path / "cache"
    run_child(f"""
        import utils.data as d
        real = d.write_json  # the fingerprint's memo is written too: die at the cache's stamp
        d.write_json = lambda path, obj: die() if path.name == "train_images.json" else real(
            path, obj)
        d.load_images(d.load_data({str(root)!r}), "train", cache_dir={str(cache)!r})
    """, cache)
    assert npy_is_complete(cache / "train_images.npy")  # complete data, but no stamp
    assert not (cache / "train_images.json").exists()
    reference = np.array(load_images(load_data(root), "train", cache_dir=tmp_path / "ref"))
    np.testing.assert_array_equal(load_images(load_data(root), "train", cache_dir=cache),
                                  reference)


def test_truncated_npy_left_by_an_older_crash_is_rebuilt(root, tmp_path):
    data = load_data(root)
    reference = np.array(load_images(data, "train", cache_dir=tmp_path))
    target = tmp_path / "train_images.npy"
    with open(target, "r+b") as f:  # the stamp still matches: only the size tells
        f.truncate(target.stat().st_size - 1000)
    assert not npy_is_complete(target)
    np.testing.assert_array_equal(load_images(data, "train", cache_dir=tmp_path), reference)
    assert npy_is_complete(target)


def test_two_processes_building_one_cache_wait_for_each_other(root, tmp_path):
    cache = tmp_path / "cache"
    code = f"""
        import time
        import numpy as np
        import utils.data as d
        real, calls = d.decode_image, []
        def slow(*args):
            calls.append(1)
            time.sleep(0.02)
            return real(*args)
        d.decode_image = slow
        images = d.load_images(d.load_data({str(root)!r}), "train", cache_dir={str(cache)!r})
        print(len(calls), int(np.asarray(images, dtype=np.int64).sum()))
    """
    env = {**os.environ, "KIT_CACHE_DIR": str(cache), "PYTHONPATH": str(KIT_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=KIT_ROOT,
                              env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(int(o[0]) for o in outs) == [0, 40]  # one built it, the other waited and read
    total = int(np.asarray(load_images(load_data(root), "train", cache_dir=tmp_path / "ref"),
                           dtype=np.int64).sum())
    assert [int(o[1]) for o in outs] == [total, total] and leftovers(cache) == []


# --- cached arrays and features -------------------------------------------------------------

def test_killed_rebuild_never_leaves_the_old_key_on_new_data(tmp_path):
    path = tmp_path / "feat.npy"
    cached_array(path, {"k": 1}, lambda: np.zeros(4))
    run_child(f"""
        import numpy as np
        import utils.files as p
        real = p.write_json
        p.write_json = lambda *a: die()  # after the new array is in place, before its key
        p.cached_array({str(path)!r}, {{"k": 2}}, lambda: np.ones(4))
    """, tmp_path)
    calls = []
    again = cached_array(path, {"k": 1}, lambda: calls.append(1) or np.zeros(4))
    assert calls == [1] and (again == 0).all()  # the ones were never served as key 1


def test_truncated_feature_file_is_recomputed(tmp_path):
    path = tmp_path / "feat.npy"
    cached_array(path, {"k": 1}, lambda: np.arange(1000.0))
    with open(path, "r+b") as f:
        f.truncate(500)
    calls = []
    out = cached_array(path, {"k": 1}, lambda: calls.append(1) or np.arange(1000.0))
    assert calls == [1] and (out == np.arange(1000.0)).all() and npy_is_complete(path)
    save_npy(path, np.arange(3))
    assert npy_is_complete(path) and not npy_is_complete(tmp_path / "missing.npy")


FEATURES = """
    import numpy as np
    import utils.features as m
    from utils.config import FeatureSpec
    from utils.data import load_data
    data = load_data({root!r})
    {patch}
    f = m.cached_features(data, FeatureSpec("test_convnext", False, 32, tta=False), batch_size=8)
    np.save({out!r}, np.concatenate([f["train"], f["test"]]))
"""


def test_killed_feature_extraction_resumes_to_identical_features(root, tmp_path):
    ref, cache = tmp_path / "ref", tmp_path / "cache"
    run_child(FEATURES.format(root=str(root), patch="", out=str(tmp_path / "ref.npy")), ref,
              expect_killed=False)
    kill_in_test = """
    real = m.extract_features
    def extract(model, images, *args, **kwargs):
        if len(images) == 8:  # the test split: train features are saved, test dies mid-way
            die()
        return real(model, images, *args, **kwargs)
    m.extract_features = extract
    """
    run_child(FEATURES.format(root=str(root), patch=kill_in_test, out=""), cache)
    names = sorted(p.name for p in (next(cache.iterdir()) / "features").iterdir())
    assert [n for n in names if n.endswith(".npy")] == [n for n in names if "train" in n
                                                        and n.endswith(".npy")]
    run_child(FEATURES.format(root=str(root), patch="", out=str(tmp_path / "rerun.npy")), cache,
              expect_killed=False)
    np.testing.assert_array_equal(np.load(tmp_path / "rerun.npy"), np.load(tmp_path / "ref.npy"))


# --- fine-tuning ------------------------------------------------------------------------------

FINETUNE = """
    import numpy as np
    from utils import train
    from utils.config import TrainConfig
    from utils.data import load_data
    cfg = TrainConfig(data_dir={root!r}, run_dir={run!r}, recipe="finetune",
                      backbone="test_convnext", pretrained=False, img_size=32, n_folds=2,
                      epochs=2, batch_size=8, patience=None, tta=False, alphas=(1.0, 100.0))
    data = load_data(cfg.data_dir)
    folds = train.make_cv_folds(cfg, data)
    folds = folds[0] if isinstance(folds, tuple) else folds
    {patch}
    run = train.train(cfg, data, folds)
    np.save({out!r}, np.concatenate([run.oof, run.test_pred]))
"""


def test_killed_fine_tuning_epoch_resumes_to_identical_predictions(root, tmp_path):
    cache = tmp_path / "cache"
    args = {"root": str(root)}
    run_child(FINETUNE.format(**args, run=str(tmp_path / "full"), patch="",
                              out=str(tmp_path / "full.npy")), cache, expect_killed=False)
    mid_epoch_two = """
    from utils import loop
    real, steps = loop.optimizer_step, []
    def step(*a):
        steps.append(1)
        if len(steps) == 4:  # 20 rows in a fold at batch 8: 3 steps an epoch; dies in epoch 2
            die()
        return real(*a)
    loop.optimizer_step = step
    """
    run_child(FINETUNE.format(**args, run=str(tmp_path / "run"), patch=mid_epoch_two, out=""),
              cache)
    assert list((tmp_path / "run").rglob("last.pt"))  # epoch 1 was checkpointed
    run_child(FINETUNE.format(**args, run=str(tmp_path / "run"), patch="",
                              out=str(tmp_path / "resumed.npy")), cache, expect_killed=False)
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"),
                                  np.load(tmp_path / "full.npy"))


# --- the submission ---------------------------------------------------------------------------

def test_killed_submission_write_leaves_the_old_file_and_rerun_is_identical(tmp_path):
    from utils.submit import make_submission, write_submission

    rng = np.random.default_rng(0)
    genes = ["G1", "G2", "G3"]
    sample = pd.DataFrame(0.0, index=range(50), columns=genes)
    sample.insert(0, "ID", [f"TEST_{i:04d}" for i in range(50)])
    frame = make_submission(rng.normal(size=(50, 3)), sample["ID"].tolist(), sample)
    write_submission(frame, sample, tmp_path / "ref.csv")
    sub = tmp_path / "sub.csv"
    sub.write_text("an older submission\n")
    frame.to_pickle(tmp_path / "frame.pkl")
    sample.to_pickle(tmp_path / "sample.pkl")
    code = f"""
        import pandas as pd
        from utils.submit import write_submission
        real = pd.DataFrame.to_csv
        def half_then_die(self, path, **kw):
            real(self, path, **kw)
            with open(path, "r+b") as f:
                f.truncate(len(f.read()) // 2)
            die()
        pd.DataFrame.to_csv = half_then_die
        write_submission(pd.read_pickle({str(tmp_path / "frame.pkl")!r}),
                         pd.read_pickle({str(tmp_path / "sample.pkl")!r}), {str(sub)!r})
    """
    run_child(code, tmp_path)
    assert sub.read_text() == "an older submission\n" and leftovers(tmp_path)
    write_submission(frame, sample, sub)
    assert sub.read_bytes() == (tmp_path / "ref.csv").read_bytes()
