"""How the kit writes files: atomically, never over its inputs, under locks, named when it fails.

Every file the kit writes (text, JSON, CSV, arrays, figures) is written atomically: to a
temporary file beside the target, renamed into place only when complete, so a crash or a bad
input never leaves a half-written output behind. Caches (`cached_array`, the image cache in
utils.data) are built under a lock file beside them, so two notebooks building the same cache
wait for each other instead of interleaving; the key file beside a cached array is removed
before the array is rebuilt and written only after it is complete, and an `.npy` whose size
does not match its header (a crash of an older version) is never trusted.

A failed write names itself: a read-only folder, a folder that cannot be created or a full disk
raise `WriteError` with the path and what to do, and leave the previous file (or none). Inputs
are never outputs: `load_data` registers the data's CSVs and folders (`protect_inputs`), and no
write may land on them (`check_output` says so early, naming the parameter).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock

from utils.places import kit_root, resolve


class WriteError(OSError):
    """A file or folder could not be written; the message names the path and what to do."""


class InputOutputError(ValueError):
    """An output path (RUN_DIR, SUBMISSION, a cache) resolves to an input of the data."""


def run_dir(path: str | os.PathLike) -> Path:
    """A run folder (created if needed), relative paths taken from the kit's root; an input of
    the data loaded so far is refused, one inside the data folder is warned about, and a
    failure to create it names the folder."""
    folder = check_output(path, "RUN_DIR")
    warn_inside_data(folder, "RUN_DIR")
    return make_folder(folder)


class InsideDataWarning(UserWarning):
    """An output folder lies inside the data folder (allowed, but outputs mix with inputs)."""


def warn_inside_data(folder: Path, what: str) -> None:
    """Warn, naming `what`, when `folder` is inside a loaded data folder (unless the kit itself
    is, as on Colab with files uploaded to /content)."""
    p = folder.expanduser().resolve()
    root = next((r for r in _INPUTS["roots"] if r in p.parents), None)
    if root is not None and root not in kit_root().resolve().parents:
        warnings.warn(f"{what}={str(folder)!r} is inside the data folder {root}: outputs mix "
                      "with the competition files (and a read-only data folder cannot hold "
                      f"them); prefer a {what} under the kit's runs/", InsideDataWarning,
                      stacklevel=3)


# --- inputs are never outputs ---------------------------------------------------------------

_INPUTS: dict[str, dict[Path, Path]] = {"files": {}, "roots": {}, "trees": {}, "runs": {}}


def protect_inputs(root: Path, files: list[Path], image_dirs: list[Path]) -> None:
    """Register a data folder's inputs for this process: its CSV files, the folder itself (no
    file is written directly into it) and its image folders (nothing is written inside them)."""
    root = Path(root).resolve()
    for kind, paths in (("files", files), ("roots", [root]), ("trees", image_dirs)):
        _INPUTS[kind].update({Path(p).resolve(): root for p in paths})


def protect_runs(folders: list[Path]) -> None:
    """Register run folders read by this process (07's RUNS): nothing is written inside them."""
    _INPUTS["runs"].update({Path(f).resolve(): Path(f) for f in folders})


def input_clash(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why writing the file (or folder) `path` would touch a registered input; None if not."""
    p = Path(path).expanduser().resolve()
    if p in _INPUTS["files"]:
        return f"it is the data's {p.name} (an input of {_INPUTS['files'][p]})"
    if p in _INPUTS["roots"] or (not folder and p.parent in _INPUTS["roots"]):
        root = p if p in _INPUTS["roots"] else p.parent
        return f"{'it is' if p == root else 'it is directly in'} the data folder {root}"
    tree = next((t for t in _INPUTS["trees"] if t == p or t in p.parents), None)
    if tree is not None:
        return f"it is inside the data's image folder {tree}"
    run = next((r for r in _INPUTS["runs"] if r == p or r in p.parents), None)
    if run is not None:
        return f"it is inside the run folder {run}, an input here"
    return None


def check_output(path: str | os.PathLike, what: str, folder: bool = True) -> Path:
    """`path` resolved, or an InputOutputError naming the parameter `what` if it would write
    over (or into) an input of the data."""
    clash = input_clash(resolve(path), folder)
    if clash:
        raise InputOutputError(f"{what}={str(path)!r} resolves to {resolve(path).resolve()}: "
                               f"{clash}. The kit never writes over its inputs; choose another "
                               f"path for {what} (e.g. under runs/ or submissions/)")
    return resolve(path)


# --- atomic writes ----------------------------------------------------------------------------

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_FOLDER = (errno.ENOENT, errno.ENOTDIR, errno.EEXIST)


def write_error(path: Path, err: OSError, making_folder: bool = False) -> OSError:
    """A WriteError that names `path`, what went wrong and what to do; `err` itself if it is
    not a write failure the kit knows."""
    if err.errno in _DISK_FULL:
        why, todo = ("the disk is full", "free some space (old caches under $KIT_CACHE_DIR or "
                     "the kit's cache/, old run folders) or write to a disk with room, then run "
                     "the cell again")
    elif err.errno in _READ_ONLY:
        why, todo = ("the folder is read-only (as /kaggle/input is)", "choose a writable folder "
                     "for RUN_DIR, SUBMISSION or $KIT_CACHE_DIR (on Kaggle: under "
                     "/kaggle/working), or make it writable")
    elif making_folder and err.errno in _NO_FOLDER:
        why, todo = ("its folder cannot be created (a part of the path is missing, not "
                     "mounted, or is a file)", "check the path, or choose another folder")
    else:
        return err
    error = WriteError(f"cannot write {path}: {why} ({err.strerror or err}). Nothing was "
                       f"written there (an earlier file, if any, is kept); {todo}")
    error.errno = err.errno
    return error


@contextmanager
def named_write_errors(path: str | os.PathLike, making_folder: bool = False):
    """Turn the OSError of a failed write into a WriteError naming `path` (see write_error)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        named = write_error(Path(path), err, making_folder)
        if named is err:
            raise
        raise named from None


def make_folder(folder: str | os.PathLike) -> Path:
    """Create a folder (and its parents) if needed; a failure is a WriteError naming it."""
    folder = Path(folder)
    with named_write_errors(folder, making_folder=True):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_file(path: str | os.PathLike) -> None:
    """Delete a file if it exists; a failure is a WriteError naming it."""
    with named_write_errors(path):
        try:
            Path(path).unlink(missing_ok=True)
        except NotADirectoryError:  # a part of the path is a file: nothing there to remove
            pass


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A path that is an input of the data is refused (InputOutputError); a failed write (read-only
    folder, full disk, a folder that cannot be created) raises a WriteError naming `path`, and
    the temporary file is removed either way.
    """
    path = Path(path)
    clash = input_clash(path)
    if clash:
        raise InputOutputError(f"refusing to write {path}: {clash}. The kit never writes over "
                               "its inputs; choose another output path (RUN_DIR, SUBMISSION or "
                               "$KIT_CACHE_DIR)")
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        with named_write_errors(path):
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


def write_csv(path: str | os.PathLike, frame, **to_csv) -> Path:
    """Write a pandas frame as CSV atomically (keyword arguments go to `DataFrame.to_csv`)."""
    return write_with(path, lambda tmp: frame.to_csv(tmp, **{"index": False, **to_csv}))


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
    """Save an array as .npy atomically; numpy's own write error (no errno: "X requested and Y
    written") is named as a full disk when the disk lacks the room, else as a failed write."""
    array = np.asarray(array)

    def write(tmp: Path) -> None:
        try:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
                np.save(f, array)
        except OSError as err:
            if err.errno is not None:
                raise
            if shutil.disk_usage(tmp.parent).free < array.nbytes:
                raise OSError(errno.ENOSPC, f"numpy: {err}") from None
            raise WriteError(f"cannot write {path}: numpy could not write the array ({err}); "
                             "nothing was written there (an earlier file, if any, is kept)"
                             ) from None

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


def npy_is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is an .npy file holding all the bytes its header announces."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError):
        return False
    if dtype.hasobject:
        return False
    return os.path.getsize(path) == offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


@contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive lock on `<path>.lock` (filelock's, on Linux, macOS and Windows: other
    processes asking for it wait)."""
    path = Path(path)
    lock = FileLock(path.with_name(f"{path.name}.lock"))
    make_folder(path.parent)
    with named_write_errors(Path(lock.lock_file)):
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def remove_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` left beside `path` (a killed writer's); call it
    only while holding `file_lock(path)`, so no live writer's file is removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp-*"))
    for tmp in stale:
        remove_file(tmp)
    return stale


def cached_array(path: str | os.PathLike, key: dict,
                 compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load `path` if it was computed for the same `key` (stored beside it), else compute it.

    Safe against a crash at any point and against several processes: under `file_lock`, the
    key file goes first, the array is written atomically, and the key file is written last.
    """
    path = Path(path)
    stamp = path.with_suffix(".json")
    key = as_json(key)
    with file_lock(path):
        old = read_json(stamp) if stamp.is_file() else None
        if old == key and npy_is_complete(path):
            return np.load(path)
        if isinstance(old, dict) and path.is_file():
            print(f"rebuilding {path.name}: {describe_key_change(old, key)}", flush=True)
        remove_file(stamp)
        remove_temporaries(path)
        array = np.asarray(compute())
        save_npy(path, array)
        write_json(stamp, key)
    return array


def describe_key_change(old: dict, new: dict) -> str:
    """Which fields of a new cache key differ from the old one, e.g. "images changed since it
    was computed"."""
    changed = sorted(k for k in new if old.get(k) != new.get(k))
    return (f"{', '.join(changed)} changed since it was computed" if changed
            else "its file is incomplete")
