"""Run folders: what a training run leaves behind, and what later notebooks read from it.

A run folder holds `config.json` (the resolved config), `folds.npy` (fold of every train row),
`oof.npy` (out-of-fold predictions, train order), `test_pred.npy` (test predictions, test.csv
order) and `cv.json` (`{"splitter", "n_folds", "folds": [parts], "overall": mean of folds,
"oof": parts}`), all on the original target scale. `config.json` is removed first and written
last, so a folder that has it is complete, and an interrupted rewrite is never taken for one.
`config.json` holds the data fingerprint (`data_fingerprint`, see utils.data): a run is reused,
explained (06) or blended (07) only with the data it was trained on. A fine-tuning run adds
`model.json` (how to rebuild every trained model: backbone, size, genes and heads per unit),
`weights/<unit>.safetensors`, `history.json` (one row per unit and epoch) and `checkpoints/`
(`settings.json`; per unit `last.pt` while it trains, `result.npz` when done). A unit is one
trained model: a fold (`fold0`), or a fold and a gene group (`fold0-<group>`).

The kit deletes only what it wrote: a run folder it made carries `MARKER`, a folder holding
files the kit does not write (`KIT_FILES`) is refused naming them, and clearing checkpoints or
weights removes only the kit's files. A run folder is written under a lock (`run_lock`: a second
writer waits) and counts as finished only when `done.json`, written last, lists its files with
their hashes (`load_run` checks them). OVERWRITE of a finished run trains in `.next/` inside it
and moves the new run in only once complete, so an interrupted retraining keeps the old run
(and its own progress, resumed by the next OVERWRITE).

Files load safely: arrays with `np.load` (no pickles), checkpoints with
`torch.load(weights_only=True)` (`load_state`): a pickle that would run code is refused, naming
the file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from utils.data import describe_change
from utils.files import (
    as_json,
    file_lock,
    make_folder,
    read_json,
    remove_file,
    run_dir,
    save_npy,
    write_json,
    write_text,
    write_with,
)
from utils.places import default_run_root, kit_root, resolve

RUN_FILES = ("folds.npy", "oof.npy", "test_pred.npy", "cv.json", "config.json")
MARKER = ".mai-kit-run.json"  # in every run folder the kit made
RECORD = "done.json"  # written last: the finished run's files and their hashes
STAGING = ".next"  # an OVERWRITE's new run, moved in when complete
# What the kit writes in a run folder (relative paths; `*` stays within one folder level).
KIT_FILES = (*RUN_FILES, RECORD, MARKER, "model.json", "history.json", "curves.png", "*.lock",
             ".*.tmp-*", "weights/fold*.safetensors", "weights/.*.tmp-*", "checkpoints/*",
             "checkpoints/*/*", "gradcam/*")


@dataclass(frozen=True)
class Run:
    """A finished run loaded from its folder."""

    path: Path
    config: dict
    cv: dict
    folds: np.ndarray
    oof: np.ndarray
    test_pred: np.ndarray

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.name


def save_run(run_dir: str | os.PathLike, config: dict, folds: np.ndarray, oof: np.ndarray,
             test_pred: np.ndarray, cv: dict) -> Path:
    """Write a run folder under its lock; every file is written atomically, the completion
    record (what marks the run finished) is removed first and written last."""
    folder = claim_run_dir(run_dir, mark=False)
    with run_lock(folder):
        remove_file(folder / RECORD)
        remove_file(folder / "config.json")
        for name, array in (("folds", folds), ("oof", oof), ("test_pred", test_pred)):
            save_npy(folder / f"{name}.npy", np.asarray(array))
        write_json(folder / "cv.json", cv)
        write_json(folder / "config.json", config)
        mark_run_dir(folder)
        write_record(folder)
    return folder


# --- what the kit wrote: marker, completion record, lock ----------------------------------------

class ForeignFilesError(FileExistsError):
    """A run folder holds files the kit did not write; it refuses to write (or delete) there."""


def is_kit_file(relative: str | os.PathLike) -> bool:
    """Whether a path inside a run folder is one the kit writes (`KIT_FILES`, or `.next/`)."""
    parts = PurePosixPath(relative).parts
    return parts[:1] == (STAGING,) or any(
        len(pattern.split("/")) == len(parts) and all(
            fnmatch.fnmatchcase(part, bit) for part, bit in zip(parts, pattern.split("/")))
        for pattern in KIT_FILES)


def foreign_files(folder: Path) -> list[str]:
    """The files under `folder` that the kit does not write, as relative paths."""
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    return sorted(rel for rel in found if not is_kit_file(rel))


def claim_run_dir(path: str | os.PathLike, mark: bool = True) -> Path:
    """A run folder the kit may write and clear (created; marked with `MARKER` unless `mark` is
    False); one holding files the kit does not write is refused, naming them: the kit deletes
    only its own files."""
    folder = run_dir(path)
    foreign = foreign_files(folder)
    if foreign:
        listing = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if
                                              len(foreign) > 10 else "")
        raise ForeignFilesError(
            f"RUN_DIR={str(path)!r} ({folder}) holds {len(foreign)} files the kit did not write: "
            f"{listing}. A run folder holds only the kit's files (it clears its checkpoints and "
            "weights when it retrains); choose a new RUN_DIR (e.g. under runs/), or move those "
            "files out")
    if mark:
        mark_run_dir(folder)
    return folder


def mark_run_dir(folder: Path) -> None:
    """Write `MARKER` in a run folder (a finished run of an older kit is recorded first)."""
    if not (folder / MARKER).is_file():
        if all((folder / name).is_file() for name in RUN_FILES) and not (folder / RECORD).is_file():
            write_record(folder)
        write_json(folder / MARKER, {"written_by": "mai-kit", "note": "a run folder: the kit "
                                     "writes, and deletes, only its own files here"})


def file_hash(path: Path) -> str:
    """sha1 of a file, read in chunks."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


NOT_RECORDED = ("checkpoints", "gradcam", STAGING, MARKER, RECORD)  # not the finished run's


def write_record(folder: Path) -> Path:
    """The completion record: every finished file of the run (not checkpoints, locks or
    temporaries) with its size and hash; written last, it is what makes the run finished."""
    relative = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    kept = [rel for rel in relative if is_kit_file(rel) and rel.parts[0] not in NOT_RECORDED
            and not rel.name.endswith(".lock") and ".tmp-" not in rel.name]
    record = {rel.as_posix(): {"bytes": (folder / rel).stat().st_size,
                               "sha1": file_hash(folder / rel)} for rel in kept}
    return write_json(folder / RECORD, {"files": record})


def changed_files(folder: Path) -> list[str]:
    """The recorded files of a finished run that are missing or differ from the record."""
    record = read_json(folder / RECORD)["files"]
    return [rel for rel, entry in record.items() if not (folder / rel).is_file()
            or (folder / rel).stat().st_size != entry["bytes"]
            or file_hash(folder / rel) != entry["sha1"]]


_HELD = threading.local()  # run folders this thread holds the lock of


@contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Hold a run folder's lock (`.<name>.run.lock` beside it): another process or thread
    writing the folder waits; the holder may take it again (re-entrant per thread)."""
    folder = resolve(run_dir)
    held = _HELD.__dict__.setdefault("folders", set())
    if folder in held:
        yield folder
        return
    with file_lock(folder.parent / f".{folder.name}.run"):  # beside it: none inside it yet
        held.add(folder)
        try:
            yield folder
        finally:
            held.discard(folder)


def save_config(config) -> Path:
    """A notebook's run folder (`config.run_dir`, created) with its resolved config written as
    config.json (01 and 02 write it first; the training notebooks write it last)."""
    folder = run_dir(config.run_dir)
    write_json(folder / "config.json", asdict(config))
    return folder


def is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether a folder holds a finished run: its completion record and the files it lists
    (a folder of an older kit, without `MARKER`: every run file)."""
    folder = resolve(run_dir)
    if (folder / RECORD).is_file():
        try:
            record = read_json(folder / RECORD)["files"]
        except (ValueError, KeyError, TypeError):
            return False
        return all((folder / rel).is_file() and (folder / rel).stat().st_size == entry["bytes"]
                   for rel, entry in record.items())
    return not (folder / MARKER).is_file() and all((folder / n).is_file() for n in RUN_FILES)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder; an incomplete one, files changed since it finished, unreadable or
    non-finite arrays and folds that disagree with cv.json are errors naming the file."""
    folder = resolve(run_dir)
    wanted = RUN_FILES + ((RECORD,) if (folder / MARKER).is_file() else ())
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a finished run: missing {', '.join(missing)} "
                                f"(run notebooks/05_train.ipynb with RUN_DIR={str(run_dir)!r})")
    arrays = {name: load_array(folder / f"{name}.npy") for name in ("folds", "oof", "test_pred")}
    changed = changed_files(folder) if (folder / RECORD).is_file() else []
    if changed:
        raise RunFileError(f"{folder}: {', '.join(changed)} changed since the run finished "
                           f"(another process wrote the folder, or a file was edited); retrain "
                           "it (05_train, OVERWRITE=True) or leave it out of RUNS")
    run = Run(path=folder, config=read_json(folder / "config.json"),
              cv=read_json(folder / "cv.json"), **arrays)
    check_run_arrays(run)
    return run


class RunFileError(ValueError):
    """A run folder's files are unreadable or do not agree; the message names the file."""


def check_run_arrays(run: Run) -> None:
    """Predictions are finite, one fold label per OOF row, as many folds as cv.json reports."""
    for name in ("oof", "test_pred"):
        array = getattr(run, name)
        bad = ~np.isfinite(array.astype(np.float64, copy=False))
        if bad.any():
            raise RunFileError(f"{run.path / (name + '.npy')} holds NaN or inf in "
                               f"{int(bad.any(axis=-1).sum())} rows: the run's predictions are "
                               "broken; retrain it (05_train, OVERWRITE=True) or leave it out")
    n_folds = len(np.unique(run.folds))
    if len(run.folds) != len(run.oof) or n_folds != run.cv.get("n_folds"):
        raise RunFileError(f"{run.path}: folds.npy ({len(run.folds)} rows, {n_folds} folds) "
                           f"does not match oof.npy ({len(run.oof)} rows) and cv.json "
                           f"({run.cv.get('n_folds')} folds); retrain the run")


class UnsafeFileError(ValueError):
    """A run file or checkpoint holds Python objects that could run code when loaded."""


def load_array(path: str | os.PathLike) -> np.ndarray:
    """An .npy array of numbers; an object array (a pickle, which could run code) is refused,
    and a truncated or corrupt file is an error naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle's protocol opcode
        if "Object arrays" not in str(err) and not ("allow_pickle" in str(err) and pickled):
            raise RunFileError(f"{path} is not a readable .npy array (truncated or corrupt: "
                               f"{err}); retrain the run (05_train, OVERWRITE=True) or leave "
                               "it out") from None
        raise UnsafeFileError(f"{path} holds pickled Python objects, not an array of numbers; "
                              "loading it could run code, so the kit refuses it (run files are "
                              "plain arrays). Delete it and retrain, or ask whoever shared the "
                              "run folder") from None
    except (OSError, EOFError) as err:
        raise RunFileError(f"{path} is not a readable .npy array ({err})") from None


def find_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Finished run folders under `root` (any depth), sorted by path; SMOKE runs (a `smoke`
    folder below `root`) and an OVERWRITE's unfinished `.next/` are left out: point `root` at
    runs/smoke to find SMOKE runs."""
    root = resolve(root)
    found = (p.parent for p in root.rglob("config.json"))
    return sorted(p for p in found if not any(
        part == "smoke" or part.startswith(".") for part in p.relative_to(root).parts)
        and is_complete(p))


def data_mismatch(config: dict, data) -> str:
    """What differs between the data a run was trained on (its config.json) and `data`; ""
    when they are the same."""
    return describe_change(config.get("data_fingerprint"), data.fingerprint)


def check_trained_on(run: Run, data, action: str = "use") -> None:
    """The run was trained on `data`, or an error naming the run and what changed."""
    change = data_mismatch(run.config, data)
    if change:
        raise ValueError(f"{run.path} was trained on other data than {data.root}: {change}. "
                         f"The kit does not {action} a run with data it was not trained on; "
                         "retrain it with this data (05_train, OVERWRITE=True) or set DATA_DIR "
                         "to its data")


def check_same_data(runs: list[Run], data) -> None:
    """Every run was trained on `data` (rows, genes and their order, targets, test IDs,
    images), or one error naming which runs hold which data: blending those would mix other
    genes, rows or test sets (shapes can agree while the data differs)."""
    check_shapes(runs, len(data.train), len(data.test), len(data.genes))
    stale = {run.name: data_mismatch(run.config, data) for run in runs}
    stale = {name: change for name, change in stale.items() if change}
    if stale:
        same = [run.name for run in runs if run.name not in stale]
        listing = "; ".join(f"{name}: {change}" for name, change in stale.items())
        raise ValueError(f"{len(stale)} of {len(runs)} runs were trained on other data than "
                         f"{data.root}, so they cannot be blended or submitted with it: "
                         f"{listing}" + (f" (trained on this data: {', '.join(same)})" if same
                                         else "") + ". Retrain them on this data (05_train, "
                         "OVERWRITE=True) or leave them out of RUNS")


def check_shapes(runs: list[Run], n_train: int, n_test: int, n_genes: int) -> None:
    """Every run's predictions fit the data at hand, or an error naming the run."""
    for run in runs:
        for what, array, rows in (("oof", run.oof, n_train), ("test_pred", run.test_pred, n_test)):
            if array.shape != (rows, n_genes):
                raise ValueError(f"run {run.path}: {what}.npy has shape {array.shape}, but the "
                                 f"data has {rows} rows x {n_genes} genes; was it trained on "
                                 f"other data (config data_dir={run.config.get('data_dir')})?")


class RunNotFoundError(FileNotFoundError):
    """A run listed in RUNS is not a finished run folder, as given or by name under RUNS_ROOT."""


def locate_run(run: str | os.PathLike, root: str | os.PathLike = "runs") -> Path:
    """The finished run folder `run`: as given (relative to the kit), else by its name under
    `root` (RUNS_ROOT) or the platform's run folder (`default_run_root`); else one message on
    why it may be missing and how to train it."""
    places = list(dict.fromkeys([resolve(run), resolve(root) / Path(run).name,
                                 default_run_root() / Path(run).name]))
    found = next((p for p in places if is_complete(p)), None)
    if found is None:
        raise RunNotFoundError(missing_run_message(Path(run).name, places)) from None
    return found


def missing_run_message(name: str, places: Sequence[Path]) -> str:
    """Why run `name` may be missing (a reset runtime, other data, not trained yet) and which
    05_train parameters write it."""
    presets = [p.stem for p in sorted((kit_root() / "presets").glob("*.yaml"))
               if re.search(rf"^RUN_DIR:\s*\S*\b{re.escape(name)}\s*$", p.read_text(), re.M)]
    how = (f"05_train with presets/{presets[0]}.yaml (or 00_quickstart, which trains its plan's "
           "runs)" if presets else f"05_train with RUN_DIR ending in {name}")
    return (f"run {name!r} is not a finished run in any of: {', '.join(map(str, places))}. "
            "Was the runtime reset (Colab's /content is lost: keep runs on Drive), is RUNS_ROOT "
            "another platform's or another data set's folder, or was it never trained? Train "
            f"it with {how}, or leave it out of RUNS")


def select_runs(runs: Sequence[str] | None, root: str | os.PathLike = "runs") -> list[Path]:
    """The listed run folders (each found as given or by name under `root`: `locate_run`); if
    none are listed, every finished run found under `root`."""
    if runs:
        return [locate_run(run, root) for run in runs]
    found = find_runs(root)
    if not found:
        raise RunNotFoundError(f"RUNS is empty and there is no finished run folder under "
                               f"{resolve(root)} (RUNS_ROOT); run notebooks/05_train.ipynb or "
                               "00_quickstart first, or list run folders in RUNS")
    return found


def _canonical_folds(folds: np.ndarray) -> np.ndarray:
    """Fold labels renumbered by first appearance: the same split with other numbers is equal."""
    _, first, inverse = np.unique(folds, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]


def check_folds(runs: list[Run]) -> None:
    """All runs share one CV split (folds.npy, up to fold numbering), or an error naming which
    runs hold which split: blending or comparing runs fitted on different folds is not honest."""
    splits: dict[bytes, list[Run]] = {}
    for run in runs:
        splits.setdefault(_canonical_folds(run.folds).tobytes(), []).append(run)
    if len(splits) > 1:
        listing = "; ".join(
            f"split {i + 1}: " + ", ".join(f"{run.name} ({run.cv['splitter']}, "
                                          f"{run.cv['n_folds']} folds)" for run in group)
            for i, group in enumerate(splits.values()))
        raise ValueError(f"the runs were cross-validated on {len(splits)} different splits "
                         f"(folds.npy differ), so their OOF predictions cannot be blended: "
                         f"{listing}. List only runs of one split in RUNS, or retrain with the "
                         "same CV, N_FOLDS and SEED")




def runs_table(runs: list[Run]):
    """One row per run: recipe, backbone, splitter and every CV part (fold mean and OOF)."""
    import pandas as pd

    rows = [{"run": run.name, "recipe": run.config.get("recipe"),
             "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"],
             "folds": run.cv["n_folds"], **run.cv["overall"], "oof_score": run.cv["oof"]["score"]}
            for run in runs]
    return pd.DataFrame(rows).set_index("run")


def reuse_run(run_dir: str | os.PathLike, config: dict, data=None) -> Run | None:
    """The finished run in `run_dir` if it was trained with the same parameters (OVERWRITE
    aside) on the same `data` (its fingerprint); None if there is none; an error naming what
    changed if the parameters or the data differ."""
    if not is_complete(run_dir):
        return None
    run = load_run(run_dir)
    saved = run.config
    changed = {k: (saved.get(k), v) for k, v in as_json(config).items()
               if k not in ("overwrite", "preset") and saved.get(k) != v}
    stale = "" if data is None else data_mismatch(run.config, data)
    if changed or stale:
        raise RunChangedError(describe_changed_run(run.path, changed, stale))
    return run


class RunChangedError(FileExistsError):
    """RUN_DIR holds a finished run of other parameters or other data."""


def describe_changed_run(path: Path, changed: dict[str, tuple], stale: str) -> str:
    """What differs between the run in `path` and this one, a line per parameter
    (`NAME: old → new`), and the two ways on."""
    lines = [f"  {name.upper()}: {old!r} → {new!r}" for name, (old, new) in changed.items()]
    lines += [f"  other data ({stale})"] if stale else []
    return (f"{path} already holds a finished run with other parameters or data (what differs: "
            f"saved → now):\n" + "\n".join(lines) + "\nIts CV and predictions do not belong "
            "to this run. Set OVERWRITE=True to retrain it there, or set RUN_DIR to a new name "
            "to keep both")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB); NaN on Windows."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)


# --- fine-tuning runs: model.json, weights, history, checkpoints ------------------------------

def weights_file(unit: str) -> str:
    """Where a unit's weights go, relative to the run folder."""
    return f"weights/{unit}.safetensors"


def prepare_checkpoints(run_dir: str | os.PathLike, settings: dict, resume: bool,
                        claim: bool = True) -> Path:
    """The checkpoint folder of a fine-tuning run: kept to resume an unfinished run with the same
    `settings`, cleared for a fresh start (RESUME=False, or retraining a finished run): only the
    kit's files in checkpoints/ and weights/ are removed, and with `claim` a run folder holding
    other files is refused (`claim_run_dir`; 04's folders hold its own outputs too)."""
    run = claim_run_dir(run_dir) if claim else resolve(run_dir)
    folder = run / "checkpoints"
    settings = as_json(settings)
    if not resume or is_complete(run):
        remove_kit_files(run, ("checkpoints", "weights"))
    saved = folder / "settings.json"
    old = read_json(saved) if saved.is_file() else settings
    if old != settings:
        changed = {k: (old.get(k), v) for k, v in settings.items()
                   if old.get(k) != v and k != "data"}
        what = [f"other settings (saved, now): {changed}"] if changed else []
        if old.get("data") != settings.get("data"):
            what.append(f"other data ({describe_change(old.get('data'), settings.get('data'))})")
        raise ValueError(f"{folder} holds checkpoints of an unfinished run with "
                         f"{' and '.join(what)}. Set RESUME=False to start over, or use another "
                         "RUN_DIR")
    write_json(saved, settings)
    return folder


def remove_kit_files(run: Path, folders: Sequence[str]) -> None:
    """Delete the kit's files in the named subfolders of a run folder (nothing else), then the
    folders left empty."""
    for name in folders:
        top = run / name
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif is_kit_file(path.relative_to(run)):
                remove_file(path)
        if not any(top.iterdir()):
            top.rmdir()


def staging_dir(run_dir: str | os.PathLike) -> Path:
    """Where OVERWRITE trains the new run of a finished run folder (moved in when complete)."""
    return resolve(run_dir) / STAGING


def replace_run(run_dir: str | os.PathLike) -> Path:
    """Move the finished run in `staging_dir` into its run folder: the old run's files go, the
    new ones move in, the completion record last. Safe to call again after an interruption (a
    journal says the old files are gone already)."""
    folder = resolve(run_dir)
    staging, journal = staging_dir(folder), staging_dir(folder) / ".moving"
    with run_lock(folder):
        if not journal.is_file():
            remove_file(folder / RECORD)
            for path in folder.iterdir():
                if path.is_file() and path.name != MARKER and not path.name.endswith(".lock") \
                        and is_kit_file(path.name):
                    remove_file(path)
            remove_kit_files(folder, ("checkpoints", "weights", "gradcam"))
            write_text(journal, "old run removed; moving the new one in\n")
        moving = sorted(p for p in staging.rglob("*") if p.is_file() and p not in (
            journal, staging / RECORD) and not p.name.endswith(".lock"))
        for path in [*moving, staging / RECORD]:
            target = folder / path.relative_to(staging)
            make_folder(target.parent)
            os.replace(path, target)
        shutil.rmtree(staging)
    return folder


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Write a training state (tensors, numpy arrays, numbers, strings, lists, tuples, dicts)
    atomically, in a form `load_state` reads with `torch.load(weights_only=True)`."""
    import torch

    plain = _to_plain(state)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a Python file: a full disk raises OSError, not RuntimeError
            torch.save(plain, f)

    write_with(path, write)


def load_state(path: str | os.PathLike) -> dict:
    """A state written by `save_state`, read with `torch.load(weights_only=True)`: a file that
    holds other Python objects (a pickle that could run code) is refused, naming it."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1][:300]
        raise UnsafeFileError(f"{path} is not a plain checkpoint of tensors and numbers: it holds "
                              f"Python objects that could run code when loaded ({reason}), so "
                              "the kit refuses it. Delete it (or set RESUME=False) to start "
                              "over; never load checkpoints you do not trust") from None
    return _from_plain(state)


NUMPY_TAG = "__numpy__"  # how save_state marks a numpy array kept as a tensor


def _to_plain(obj):
    """`obj` with numpy arrays as tagged tensors and numpy scalars as Python numbers."""
    import torch

    if isinstance(obj, np.ndarray):
        return {NUMPY_TAG: torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32
                                            else obj), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def _from_plain(obj):
    """The inverse of `_to_plain`: tagged tensors back to numpy arrays of their dtype."""
    if isinstance(obj, dict):
        if NUMPY_TAG in obj:
            return obj[NUMPY_TAG].numpy().astype(np.dtype(obj["dtype"]))
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


class Stopwatch:
    """Seconds spent on a run over all its processes: a resumed run adds the time its earlier
    processes recorded (up to their last checkpoint) in `elapsed.json` of its checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.before = float(read_json(self.path)["seconds"]) if self.path.is_file() else 0.0
        self.start = time.perf_counter()

    def total(self) -> float:
        """Seconds so far, this process and the earlier ones."""
        return self.before + time.perf_counter() - self.start

    def tick(self) -> None:
        """Record the seconds so far (after each checkpoint)."""
        write_json(self.path, {"seconds": round(self.total(), 1)})


def read_model_info(run_dir: str | os.PathLike) -> dict:
    """`model.json` of a fine-tuning run; any other folder is an error that says why."""
    folder = resolve(run_dir)
    if (folder / "model.json").is_file():
        return read_json(folder / "model.json")
    if (folder / "config.json").is_file():
        recipe = read_json(folder / "config.json").get("recipe")
        raise ValueError(f"{folder} is a RECIPE={recipe!r} run: it has no fine-tuned network to "
                         "explain (a frozen backbone + ridge has no model.json or weights/). Set "
                         "RUN_DIR to a run of 05_train with RECIPE='finetune'")
    raise FileNotFoundError(f"{folder} is not a run folder (no model.json, no config.json): run "
                            f"notebooks/05_train.ipynb with RECIPE='finetune' and "
                            f"RUN_DIR={str(run_dir)!r} first, or set RUN_DIR to a fine-tuning run")


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch history of a fine-tuning run folder (empty for other recipes)."""
    path = resolve(run_dir) / "history.json"
    return read_json(path) if path.is_file() else []
