"""Atomic file writes: a crash or a bad input never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write JSON atomically (indented, paths and numpy scalars turned into plain values)."""
    return write_text(path, json.dumps(obj, indent=2, default=_plain) + "\n")


def as_json(obj: object) -> object:
    """`obj` as it reads back from a JSON file (tuples → lists, numpy → plain), for comparing."""
    return json.loads(json.dumps(obj, default=_plain))


def read_json(path: str | os.PathLike) -> object:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save an array as .npy atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.asarray(array))

    return write_with(path, write)


def _plain(value: object) -> object:
    """JSON fallback for Paths, numpy scalars/arrays and tuples of them."""
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def cached_array(path: str | os.PathLike, key: dict,
                 compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load `path` if it was computed for the same `key` (stored beside it), else compute it."""
    path = Path(path)
    stamp = path.with_suffix(".json")
    key = as_json(key)
    if path.is_file() and stamp.is_file() and read_json(stamp) == key:
        return np.load(path)
    array = np.asarray(compute())
    save_npy(path, array)
    write_json(stamp, key)
    return array
