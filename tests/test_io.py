"""utils.files, atomic writes: JSON round trips; nothing is ever left half-written behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import KIT_ROOT

from utils.files import (
    atomic_path,
    cached_array,
    file_lock,
    read_json,
    save_npy,
    write_json,
    write_text,
    write_with,
)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_json_round_trip_with_numpy_and_paths(tmp_path):
    obj = {"lr": np.float32(0.5), "epochs": np.int64(3), "ok": np.bool_(True),
           "root": tmp_path / "data", "shape": (2, np.int32(4)), "arr": np.arange(3),
           "nested": {"score": np.float64(0.125), "names": ["a", "b"]}, "none": None}
    path = write_json(tmp_path / "sub" / "config.json", obj)
    assert path == tmp_path / "sub" / "config.json"
    back = read_json(path)
    assert back == {"lr": 0.5, "epochs": 3, "ok": True, "root": str(tmp_path / "data"),
                    "shape": [2, 4], "arr": [0, 1, 2],
                    "nested": {"score": 0.125, "names": ["a", "b"]}, "none": None}
    assert type(back["epochs"]) is int and type(back["ok"]) is bool
    assert path.read_text().endswith("\n")
    assert _files(tmp_path / "sub") == ["config.json"]


def test_write_json_refuses_unknown_types_and_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="set"):
        write_json(tmp_path / "x.json", {"a": {1, 2}})
    assert _files(tmp_path) == []


def test_write_text_replaces_existing(tmp_path):
    write_text(tmp_path / "a.txt", "one")
    write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two" and _files(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.array([], dtype=np.int64), np.array(["a", "bc"])])
def test_save_npy_round_trip(tmp_path, array):
    path = save_npy(tmp_path / "arr.npy", array)
    assert path == tmp_path / "arr.npy"
    loaded = np.load(path)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)
    assert _files(tmp_path) == ["arr.npy"]


@pytest.mark.parametrize("name", ["oof", "oof.dat"])
def test_save_npy_without_npy_suffix(tmp_path, name):
    """np.save appends '.npy' to names without it; the atomic rename must still find the file."""
    save_npy(tmp_path / name, np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / name), np.arange(3))
    assert _files(tmp_path) == [name]


def test_save_npy_failure_leaves_no_file(tmp_path):
    class Broken:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")
    with pytest.raises(RuntimeError):
        save_npy(tmp_path / "arr.npy", Broken())
    assert _files(tmp_path) == []


def test_writer_exception_leaves_no_file_and_no_temp(tmp_path):
    def writer(tmp: Path) -> None:
        np.save(tmp, np.arange(5))
        assert tmp.is_file() and tmp.parent == tmp_path and tmp.suffix == ".npy"
        raise RuntimeError("crash half-way")
    with pytest.raises(RuntimeError, match="half-way"):
        write_with(tmp_path / "arr.npy", writer)
    assert _files(tmp_path) == []


def test_writer_exception_keeps_previous_file(tmp_path):
    save_npy(tmp_path / "arr.npy", np.arange(3))

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"garbage")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_with(tmp_path / "arr.npy", writer)
    np.testing.assert_array_equal(np.load(tmp_path / "arr.npy"), np.arange(3))
    assert _files(tmp_path) == ["arr.npy"]


def test_atomic_path_renames_only_on_success(tmp_path):
    with atomic_path(tmp_path / "deep" / "out.txt") as tmp:
        tmp.write_text("hi")
        assert not (tmp_path / "deep" / "out.txt").exists()
    assert (tmp_path / "deep" / "out.txt").read_text() == "hi"
    assert _files(tmp_path / "deep") == ["out.txt"]


def test_cached_array_computes_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(4) * len(calls)
    key = {"backbone": "test_vit", "n": np.int64(4), "root": tmp_path}
    first = cached_array(tmp_path / "feat.npy", key, compute)
    again = cached_array(tmp_path / "feat.npy", dict(key), compute)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1
    other = cached_array(tmp_path / "feat.npy", {**key, "n": 5}, compute)
    assert len(calls) == 2
    np.testing.assert_array_equal(other, np.arange(4) * 2)
    assert _files(tmp_path) == ["feat.json", "feat.npy", "feat.npy.lock"]


def test_file_lock_makes_another_process_wait(tmp_path):
    """A second process asking for the lock waits until the holder lets go."""
    target = tmp_path / "sub" / "cache.npy"
    code = ("import time; from utils.files import file_lock\n"
            f"with file_lock({str(target)!r}):\n"
            "    print('held', flush=True); time.sleep(1.5)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=str(KIT_ROOT), env={**os.environ, "PYTHONPATH": str(KIT_ROOT)})
    assert holder.stdout.readline().strip() == "held"
    start = time.perf_counter()
    with file_lock(target):
        waited = time.perf_counter() - start
    holder.wait()
    assert waited > 0.5 and (tmp_path / "sub" / "cache.npy.lock").is_file()
    with file_lock(target):  # free again: taken at once
        pass
