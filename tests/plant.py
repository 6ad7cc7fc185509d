"""Planting write faults for tests: a read-only folder and a full disk.

Tests may run as root, where `chmod` does not stop writes. `read_only` then uses the immutable
attribute (`chattr +i`, a real kernel refusal) where the file system allows it, and otherwise
patches the calls that create, write, rename and delete files under the folder to fail with
EACCES. `full_disk` makes the kit's next temporary file for a path a link to /dev/full, so every
write to it fails with the kernel's ENOSPC; `failing_open` is an `open` whose files fail with
ENOSPC after some bytes (a disk that fills up mid-write, leaving a partial file).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def read_only_modes() -> list[str]:
    """The ways this machine can make a folder read-only: chmod (not root), chattr, patch."""
    modes = ["patch"]
    if os.geteuid() != 0:
        modes.insert(0, "chmod")
    elif shutil.which("chattr"):
        modes.insert(0, "chattr")
    return modes


def _chattr(folder: Path, flag: str) -> bool:
    return subprocess.run(["chattr", flag, str(folder)], capture_output=True).returncode == 0


@contextmanager
def read_only(folder: Path, mode: str = "auto"):
    """Make `folder` read-only while the block runs (see the module docstring for how)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    mode = read_only_modes()[0] if mode == "auto" else mode
    if mode == "chmod":
        folder.chmod(0o555)
        try:
            yield mode
        finally:
            folder.chmod(0o755)
    elif mode == "chattr":
        if not _chattr(folder, "+i"):
            pytest.skip("chattr +i is not allowed on this file system")
        try:
            yield mode
        finally:
            _chattr(folder, "-i")
    else:
        with _patched_read_only(folder):
            yield mode


def _under(folder: Path, path) -> bool:
    try:
        p = Path(os.fsdecode(path)).absolute()
    except TypeError:  # a file descriptor
        return False
    return p == folder or folder in p.parents


def _refuse(path) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied (planted)", os.fsdecode(path))


@contextmanager
def _patched_read_only(folder: Path):
    """Creating, writing, renaming or deleting anything under `folder` fails with EACCES."""
    real = {"open": builtins.open, "os_open": os.open, "mkdir": os.mkdir,
            "replace": os.replace, "rename": os.rename, "unlink": os.unlink}

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _under(folder, file):
            raise _refuse(file)
        return real["open"](file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(folder, path):
            raise _refuse(path)
        return real["os_open"](path, flags, *args, **kwargs)

    def guard(name: str, n_paths: int = 1):
        def call(*args, **kwargs):
            for path in args[:n_paths]:  # a missing file fails as it would (ENOENT) first
                if _under(folder, path) and (name == "mkdir" or os.path.lexists(path)
                                             or path is not args[0]):
                    raise _refuse(path)
            return real[name](*args, **kwargs)
        return call

    mp = pytest.MonkeyPatch()
    mp.setattr(builtins, "open", guarded_open)
    mp.setattr(io, "open", guarded_open)
    mp.setattr(os, "open", guarded_os_open)
    mp.setattr(os, "mkdir", guard("mkdir"))
    mp.setattr(os, "replace", guard("replace", 2))
    mp.setattr(os, "rename", guard("rename", 2))
    mp.setattr(os, "unlink", guard("unlink"))
    try:
        yield
    finally:
        mp.undo()


def kit_tmp(path: Path) -> Path:
    """The temporary file `utils.files.atomic_path` writes `path` through in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def full_disk(path: Path) -> Path:
    """The next atomic write of `path` in this process goes to /dev/full (ENOSPC)."""
    tmp = kit_tmp(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.symlink_to("/dev/full")
    return tmp


class _FillingFile(io.RawIOBase):
    """A binary file that takes `room` bytes, then fails with ENOSPC (not a FileIO, so numpy
    writes through `write` rather than the file descriptor)."""

    def __init__(self, path, room: list[int]):
        self.file, self.room = io.FileIO(path, "w"), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room[0]:
            self.file.write(data[:self.room[0]])
            self.room[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device (planted)")
        self.room[0] -= len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
        super().close()


def failing_open(room: int):
    """An `open` for patching into a kit module: files opened for binary writing accept `room`
    bytes (all such files together), write those to disk, and then fail with ENOSPC."""
    left = [room]

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            return _FillingFile(file, left)
        return builtins.open(file, mode, *args, **kwargs)

    return fake_open
