"""Load and validate the DACON files; decode every patch once into a memory-mapped cache.

`load_data` reads train.csv, test.csv and sample_submission.csv and refuses anything that would
make a run or a submission silently wrong. `load_images` decodes the PNGs once into a uint8
(N, H, W, 3) `.npy` file (under the kit's `cache/`) and memory-maps it afterwards, so no later
epoch or notebook decodes PNGs again. `PatchDataset` serves that array to a torch DataLoader.

Every patch becomes uint8 RGB. Usable non-RGB files are converted as `CONVERSIONS` says, with
one `ImageConversionWarning` per split naming how many files each conversion applied to; a
fully transparent patch is an error. All train patches must have one size (the error lists the
files that differ from the most common size); test patches of another size than the train
patches are resized to it (bicubic), with the same warning. The conversions are stored with the
cache, and the warning is repeated on every call that reads it (`warn_every_time`: Python's
once-per-location registry would silence a rerun cell or a later run over the same cache).

Targets beyond float32's range are refused; genes whose values float32 would round by more than
0.1% of their spread are kept in float64, with a `DataWarning` naming them.

`KitData.fingerprint` says what the data is: hashes of the train and test rows (IDs and image
paths, in order), the gene names in order, the target values and the bytes of every image file
(memoised per file name, size and modification time in the cache folder, so only the first call
reads the files). Runs store it in config.json and caches in their keys; `describe_change` says
what differs between two.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from utils.files import (
    atomic_path,
    check_output,
    describe_key_change,
    file_lock,
    npy_is_complete,
    protect_inputs,
    read_json,
    remove_file,
    remove_temporaries,
    write_json,
)
from utils.places import find_data_dir, kit_root

ID_COLUMNS = ("ID", "path")
CACHE_ENV_VAR = "KIT_CACHE_DIR"


class DataError(ValueError):
    """The competition files are inconsistent; the message names the file, rows or columns."""


class DataWarning(UserWarning):
    """The data is usable but not as expected; the message says what the kit did about it."""


class ImageConversionWarning(DataWarning):
    """Some patches were not 8-bit RGB (or not the train size) and were converted."""


def warn_every_time(message: str, category: type[Warning] = DataWarning,
                    stacklevel: int = 2) -> None:
    """`warnings.warn`, shown on every call: without the once-per-location registry a rerun
    cell, or a later run over the same cache, warns again under Python's default filters
    (filters that ignore or raise the category still apply)."""
    frame = sys._getframe(stacklevel)
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=None)


@dataclass(frozen=True)
class KitData:
    """The validated competition data: IDs and image paths, gene names and train targets."""

    root: Path
    train: pd.DataFrame  # ID, path
    test: pd.DataFrame  # ID, path
    sample: pd.DataFrame  # the sample submission: ID, genes
    genes: list[str]
    y: np.ndarray  # (n_train, n_genes), original scale; float32 (float64 if float32 loses)
    subset: str | None = None  # SMOKE: "48 of 6992 train, 16 of 2277 test rows"; None: all
    source: KitData | None = field(default=None, repr=False, compare=False)  # see rows_of
    rows: dict[str, tuple[str, np.ndarray]] | None = field(default=None, repr=False,
                                                            compare=False)

    def image_paths(self, split: str) -> list[Path]:
        """Absolute image paths of 'train' or 'test', in row order."""
        return [self.root / p for p in _split_frame(self, split)["path"]]

    @cached_property
    def fingerprint(self) -> dict:
        """What this data is (see `data_fingerprint`); computed once per KitData."""
        return data_fingerprint(self)


SMOKE_ROWS = (48, 16)  # train and test rows of a SMOKE quick check


def load_data(data_dir: str | os.PathLike | None = None, smoke: bool = False) -> KitData:
    """Find, read and validate the DACON files (see utils.places for where it looks).

    `smoke`: the quick check every notebook's `SMOKE = True` runs: every file is still read and
    validated, then only SMOKE_ROWS evenly spaced train and test rows are kept (row order, and so
    slice order, preserved), with a banner saying that its scores mean nothing.
    """
    data = _load_all(data_dir)
    return smoke_subset(data) if smoke else data


def smoke_subset(data: KitData, rows: tuple[int, int] = SMOKE_ROWS) -> KitData:
    """A few evenly spaced train and test rows of the data, announced by a banner."""
    pick = {split: np.unique(np.linspace(0, len(frame) - 1, min(n, len(frame))).astype(int))
            for split, frame, n in (("train", data.train, rows[0]), ("test", data.test, rows[1]))}
    test = data.test.iloc[pick["test"]].reset_index(drop=True)
    sample = data.sample.iloc[pd.Index(data.sample["ID"]).get_indexer(test["ID"])]
    sample = sample.reset_index(drop=True)  # by position: no column insert (a wide frame's
    # reset_index() inserts "ID" into a fragmented frame: pandas' PerformanceWarning)
    subset = (f"{len(pick['train'])} of {len(data.train)} train, {len(pick['test'])} of "
              f"{len(data.test)} test rows")
    print(f"SMOKE quick check on {subset}: it checks that everything runs, and its scores mean "
          "nothing; its run folders are kept apart from real ones (in smoke/ folders). Set SMOKE "
          "= False for a real run.", flush=True)
    return KitData(root=data.root, train=data.train.iloc[pick["train"]].reset_index(drop=True),
                   test=test, sample=sample, genes=data.genes, y=data.y[pick["train"]],
                   subset=subset)


def rows_of(data: KitData, train_rows: np.ndarray, test_rows: np.ndarray,
            test_from: str = "train", name: str = "") -> KitData:
    """The data restricted to chosen rows: `train_rows` of its train set as train, `test_rows`
    of its `test_from` set as test (held-out rows keep their targets in `source`). It remembers
    `source` and the rows, so caches of the full data (images, features) are sliced, never
    recomputed; `name` tells the subset apart in its own cache folder."""
    train_rows, test_rows = np.asarray(train_rows, np.int64), np.asarray(test_rows, np.int64)
    frame = _split_frame(data, test_from)
    for rows, size, what in ((train_rows, len(data.train), "train"),
                             (test_rows, len(frame), test_from)):
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= size:
            raise ValueError(f"rows_of: {what} rows must be a non-empty subset of 0..{size - 1}")
    test = frame.iloc[test_rows][list(ID_COLUMNS)].reset_index(drop=True)
    sample = pd.DataFrame({"ID": test["ID"], **dict.fromkeys(data.genes, 0.0)})
    subset = (f"{name + ': ' if name else ''}{len(train_rows)} train and {len(test_rows)} "
              f"{test_from} rows as test, of {data.root.name}")
    return KitData(root=data.root, train=data.train.iloc[train_rows].reset_index(drop=True),
                   test=test, sample=sample, genes=data.genes, y=data.y[train_rows],
                   subset=subset, source=data,
                   rows={"train": ("train", train_rows), "test": (test_from, test_rows)})


def _load_all(data_dir: str | os.PathLike | None) -> KitData:
    """Every row of the DACON files, validated."""
    root = find_data_dir(data_dir)
    train, test, sample = (_read_csv(root / name) for name in
                           ("train.csv", "test.csv", "sample_submission.csv"))
    _check_columns(train, test, sample)
    genes = list(sample.columns[1:])
    y = _read_targets(train, genes, root / "train.csv")
    for frame, name in ((train, "train.csv"), (test, "test.csv"),
                        (sample, "sample_submission.csv")):
        _check_blank_cells(frame, name)
        _check_unique_ids(frame, name)
    _check_same_ids(test, sample)
    _check_images_exist(root, train, "train.csv")
    _check_images_exist(root, test, "test.csv")
    _warn_outside(root, [*train["path"], *test["path"]])
    image_dirs = {(root / p).parent for p in (*train["path"], *test["path"])}
    protect_inputs(root, [root / n for n in ("train.csv", "test.csv", "sample_submission.csv")],
                   sorted(image_dirs))
    return KitData(root=root, train=train[list(ID_COLUMNS)], test=test[list(ID_COLUMNS)],
                   sample=sample, genes=genes, y=y)


def _warn_outside(root: Path, paths: list[str]) -> None:
    """A DataWarning naming absolute image paths outside the data folder (the data is then more
    than its folder: a copy of it elsewhere would miss them)."""
    inside = root.resolve()
    outside = [p for p in paths if Path(p).is_absolute() and inside not in
               Path(p).resolve().parents]
    if outside:
        warn_every_time(f"{len(outside)} image paths are absolute and outside the data folder "
                        f"{root}, e.g. {outside[:5]}; the kit reads them, but a copy of the data "
                        "folder will not have them: keep images under it with relative paths",
                        DataWarning, stacklevel=3)


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV with ID/path columns read as text and at least one row, or a DataError naming the
    file; duplicated column names are refused (pandas would rename the second `X` to `X.1`)."""
    try:
        _check_unique_header(path)
        frame = pd.read_csv(path, dtype={"ID": str, "path": str}, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({err})") from err
    if frame.empty:
        raise DataError(f"{path}: no data rows (only the header line); expected one row per "
                        f"spot")
    return frame


def _check_unique_header(path: Path) -> None:
    """Every column name of the header line appears once."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    counts = Counter(header)
    dup = [name for name, n in counts.items() if n > 1]
    if dup:
        where = {name: [i for i, h in enumerate(header) if h == name] for name in dup[:5]}
        raise DataError(f"{path}: {len(dup)} column names appear more than once in the header; "
                        f"expected unique gene names: " + ", ".join(
                            f"{name!r} at columns {cols}" for name, cols in where.items()))


def _check_columns(train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame) -> None:
    """ID/path columns where expected; the same genes in the same order in train and sample."""
    for frame, name, first in ((train, "train.csv", ID_COLUMNS), (test, "test.csv", ID_COLUMNS),
                               (sample, "sample_submission.csv", ("ID",))):
        if tuple(frame.columns[:len(first)]) != first:
            raise DataError(f"{name}: the first columns must be {', '.join(first)}; found "
                            f"{', '.join(map(str, frame.columns[:len(first)]))}")
    train_genes, sample_genes = list(train.columns[2:]), list(sample.columns[1:])
    if train_genes == sample_genes:
        return
    missing, extra = set(sample_genes) - set(train_genes), set(train_genes) - set(sample_genes)
    if missing or extra:
        raise DataError(f"train.csv and sample_submission.csv have different gene columns: "
                        f"{len(missing)} only in sample_submission.csv {sorted(missing)[:10]}, "
                        f"{len(extra)} only in train.csv {sorted(extra)[:10]}")
    first = next(i for i, (a, b) in enumerate(zip(train_genes, sample_genes)) if a != b)
    raise DataError(f"train.csv and sample_submission.csv list the same genes in a different "
                    f"order; first difference at gene column {first}: train.csv has "
                    f"{train_genes[first]!r}, sample_submission.csv has {sample_genes[first]!r}")


def _read_targets(train: pd.DataFrame, genes: list[str], path: Path) -> np.ndarray:
    """Gene columns as float32; non-numeric or NaN/inf cells → DataError naming rows/columns."""
    values = train[genes]
    text = [g for g, dtype in values.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if text:
        raise DataError(f"{path}: non-numeric values in {len(text)} gene columns, e.g. "
                        f"{text[:10]}")
    y = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise DataError(f"{path}: NaN or inf targets in {len(rows)} rows "
                        f"(IDs {train['ID'].iloc[rows[:10]].tolist()}) and {len(cols)} columns "
                        f"({[genes[c] for c in cols[:10]]})")
    return _narrow_targets(y, train["ID"], genes, path)


FLOAT32_MAX = float(np.finfo(np.float32).max)
PRECISION = 1e-3  # float32 may move a gene's values by at most this fraction of its spread


def _narrow_targets(y: np.ndarray, ids: pd.Series, genes: list[str], path: Path) -> np.ndarray:
    """Float64 targets as float32; values beyond float32's range are refused (they would become
    inf), genes float32 would round by more than PRECISION of their spread stay float64."""
    big = np.abs(y) > FLOAT32_MAX
    if big.any():
        rows, cols = np.flatnonzero(big.any(axis=1)), np.flatnonzero(big.any(axis=0))
        raise DataError(f"{path}: {int(big.sum())} target values beyond float32's range "
                        f"(|y| > {FLOAT32_MAX:.3g}, e.g. {y[big][0]:.3g}) in {len(rows)} rows "
                        f"(IDs {ids.iloc[rows[:10]].tolist()}) and {len(cols)} gene columns "
                        f"({[genes[c] for c in cols[:10]]}); the kit computes in float32, where "
                        "they would become inf. Rescale those genes (e.g. log1p) and rerun")
    y32 = y.astype(np.float32)
    spread = y.std(axis=0)
    # float32 rounds a value v by at most |v| * 2**-24: only columns where that bound exceeds
    # PRECISION of the spread can lose, and only they are checked exactly
    maybe = np.flatnonzero(np.abs(y).max(axis=0) * 2.0 ** -24 > PRECISION * spread)
    error = np.sqrt(np.mean((y32[:, maybe].astype(np.float64) - y[:, maybe]) ** 2, axis=0))
    lossy = maybe[(spread[maybe] > 0) & (error > PRECISION * spread[maybe])]
    if not len(lossy):
        return y32
    warn_every_time(f"{path}: float32 would round {len(lossy)} gene columns by more than "
                    f"{PRECISION:.1%} of their spread (large values with a small spread, e.g. "
                    f"{[genes[c] for c in lossy[:10]]}): the targets are kept in float64. "
                    "Predictions are float32, so subtract a per-gene offset (or log-transform) "
                    "those genes for full precision", DataWarning, stacklevel=5)
    return y


def _check_blank_cells(frame: pd.DataFrame, name: str) -> None:
    """No empty ID or path cell (pandas reads them as NaN)."""
    for column in (c for c in ID_COLUMNS if c in frame.columns):
        cells = frame[column]
        blank = np.flatnonzero(cells.isna().to_numpy() | (cells.astype(str).str.strip() == ""))
        if len(blank):
            lines = (blank[:10] + 2).tolist()  # line 1 is the header
            ids = frame["ID"].iloc[blank[:10]].tolist()
            raise DataError(f"{name}: empty {column!r} cell in {len(blank)} rows (CSV lines "
                            f"{lines}, IDs {ids}); expected "
                            + ("an ID" if column == "ID" else "an image path like ./train/X.png"))


def _check_unique_ids(frame: pd.DataFrame, name: str) -> None:
    """Every ID appears once."""
    dup = frame["ID"][frame["ID"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{name}: {len(dup)} duplicated IDs, e.g. {dup[:10]}")


def _check_same_ids(test: pd.DataFrame, sample: pd.DataFrame) -> None:
    """test.csv and sample_submission.csv hold the same IDs."""
    only_test = sorted(set(test["ID"]) - set(sample["ID"]))
    only_sample = sorted(set(sample["ID"]) - set(test["ID"]))
    if only_test or only_sample:
        raise DataError(f"test.csv and sample_submission.csv IDs differ: {len(only_test)} only in "
                        f"test.csv {only_test[:10]}, {len(only_sample)} only in "
                        f"sample_submission.csv {only_sample[:10]}")


def _check_images_exist(root: Path, frame: pd.DataFrame, name: str) -> None:
    """Every image path of a CSV (relative to the data folder) is a file."""
    missing = [p for p in frame["path"] if not (root / p).is_file()]
    if missing:
        raise DataError(f"{name}: {len(missing)} image files do not exist under {root}, e.g. "
                        f"{missing[:5]}")


def _split_frame(data: KitData, split: str) -> pd.DataFrame:
    """data.train or data.test by name."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return data.train if split == "train" else data.test


# --- image cache ------------------------------------------------------------------------------

def cache_dir_for(data: KitData) -> Path:
    """Where a data folder's caches go: `$KIT_CACHE_DIR` or the kit's `cache/`, one subfolder
    per data folder. Data folders are never written to (Kaggle input is read-only): a cache
    folder that is an input of the data is refused."""
    digest = hashlib.sha1(f"{data.root}|{data.subset or ''}".encode()).hexdigest()[:10]
    base = os.environ.get(CACHE_ENV_VAR) or kit_root() / "cache"
    check_output(base, f"${CACHE_ENV_VAR}" if os.environ.get(CACHE_ENV_VAR) else "the cache")
    return Path(base) / f"{data.root.name}{'-smoke' if data.subset else ''}-{digest}"


def load_images(data: KitData, split: str, cache_dir: str | os.PathLike | None = None,
                size: tuple[int, int] | None = None, workers: int = 4,
                warn: bool = True) -> np.ndarray:
    """All patches of a split as a read-only memory-mapped uint8 (N, H, W, 3) array.

    The first call decodes the PNGs into `<cache_dir>/<split>_images.npy`; later calls only map
    it. The cache is rebuilt when the image files change (names, sizes or times), when it is
    incomplete, and never read while another process builds it. Every patch must have `size`
    (H, W); None takes the most common train patch size (224x224 on DACON) and resizes test
    patches of another size to it. `warn`: repeat the conversion warning (a caller that has
    loaded the split once already passes False, so one call warns once).
    """
    if data.source is not None and cache_dir is None:  # a row subset: slice the full cache
        split_of_source, rows = data.rows[split]
        return np.asarray(load_images(data.source, split_of_source, None, size, workers)[rows])
    folder = check_output(cache_dir, "cache_dir") if cache_dir else cache_dir_for(data)
    target, stamp = folder / f"{split}_images.npy", folder / f"{split}_images.json"
    fingerprint = images_fingerprint(data, split, size)
    with file_lock(target):
        built = read_json(stamp) if stamp.is_file() else {}
        if {k: built.get(k) for k in fingerprint} != fingerprint or not npy_is_complete(target):
            if built and target.is_file():
                print(f"rebuilding {target}: {describe_key_change(built, fingerprint)}",
                      flush=True)
            remove_file(stamp)
            remove_temporaries(target)
            built = {**fingerprint, "conversions": _build_image_cache(data, split, target, size,
                                                                      workers)}
            write_json(stamp, built)
    if warn:
        _warn_conversions(split, built.get("conversions", {}), fingerprint["n"])
    return np.load(target, mmap_mode="r")


def images_fingerprint(data: KitData, split: str,
                       size: tuple[int, int] | None = None) -> dict:
    """What a split's image cache is built from: file names, sizes and modification times, and
    the split's image part of the data fingerprint (the files' bytes); for test without an
    explicit size, the train files' too: they set the patch size."""
    key = {"n": len(_split_frame(data, split)), "size": list(size) if size else None,
           "files": _files_digest(data.image_paths(split)),
           "content": data.fingerprint[f"{split}_images"]}
    if split == "test" and size is None:
        key["train_files"] = _files_digest(data.image_paths("train"))
    return key


def images_content_key(data: KitData, split: str) -> dict:
    """What the caches computed from a split's images (features, hashes) are keyed on: the
    images' bytes, not their files' times or inodes, so a copy of the data, or the same dataset
    mounted again after a restart, reuses them; test's also on train's bytes (they set the patch
    size)."""
    key = {"n": len(_split_frame(data, split)), "content": data.fingerprint[f"{split}_images"]}
    if split == "test":
        key["train_content"] = data.fingerprint["train_images"]
    return key


def _files_digest(paths: list[Path]) -> str:
    """A hash of the names, byte sizes, modification and change times and inodes of files (a
    file swapped in with the same size and mtime has another ctime or inode)."""
    digest = hashlib.sha1()
    for p in paths:
        st = p.stat()
        digest.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}\n"
                      .encode())
    return digest.hexdigest()


MAX_IMAGE_BYTES = 64 * 2 ** 20  # a patch file larger than this is refused (DACON's: ~150 kB)
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"BM": "BMP", b"RIFF": "WebP"}


def check_image_file(path: Path) -> None:
    """An image file by its first bytes and no larger than MAX_IMAGE_BYTES, or a DataError
    naming it: checked before a byte is hashed or decoded."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, over MAX_IMAGE_BYTES={MAX_IMAGE_BYTES:,} (a "
                        "patch is a few hundred kB at most); is it the right file?")
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(magic) for magic in IMAGE_MAGIC):
        raise DataError(f"{path}: cannot decode image: not a PNG, JPEG, TIFF, BMP or WebP "
                        f"(it starts with {head!r}); the kit reads only image files")


def hash_file(path: Path) -> str:
    """sha1 of an image file after `check_image_file`, read in chunks (never whole)."""
    check_image_file(path)
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the data fingerprint -------------------------------------------------------------------

FINGERPRINT_VERSION = 1
# fingerprint part → how a change reads in a message
FINGERPRINT_PARTS = {"train_rows": "train rows (train.csv IDs or image paths, or their order)",
                     "genes": "genes (names or order)", "targets": "train target values",
                     "test_rows": "test rows (test.csv IDs or image paths, or their order)",
                     "train_images": "train image files", "test_images": "test image files"}


def data_fingerprint(data: KitData) -> dict:
    """Hashes of every part of the data a run depends on (FINGERPRINT_PARTS), the counts, and
    `digest`, one hash of them all. Image files are hashed by content, so a copy of the data
    folder on another machine has the same fingerprint."""
    parts = {"train_rows": _text_digest([*data.train["ID"], *data.train["path"]]),
             "genes": _text_digest(data.genes),
             "targets": _array_digest(data.y),
             "test_rows": _text_digest([*data.test["ID"], *data.test["path"]]),
             "train_images": image_content_digest(data, "train"),
             "test_images": image_content_digest(data, "test")}
    counts = {"n_train": len(data.train), "n_test": len(data.test), "n_genes": len(data.genes)}
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"version": FINGERPRINT_VERSION, **counts, **parts, "digest": digest}


def _array_digest(array: np.ndarray) -> str:
    """A hash of an array's dtype, shape and values in column-major order (no copy for the
    column-major arrays pandas gives)."""
    digest = hashlib.sha1(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.asfortranarray(array).T)
    return digest.hexdigest()


def _text_digest(items: list[str]) -> str:
    """A hash of strings in order."""
    return hashlib.sha1("\n".join(map(str, items)).encode()).hexdigest()


def image_content_digest(data: KitData, split: str, workers: int = 4) -> str:
    """A hash of the bytes of a split's image files in row order (each checked to be an image
    first, and read in chunks), memoised in the cache folder under their names, sizes, times
    and inodes (only a changed file list reads them)."""
    paths = data.image_paths(split)
    memo, files = cache_dir_for(data) / f"{split}_content.json", _files_digest(paths)
    saved = read_json(memo) if memo.is_file() else {}
    if saved.get("files") == files:
        return saved["content"]
    with ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(hash_file, paths))
    content = _text_digest([f"{p.name}|{h}" for p, h in zip(paths, hashes)])
    write_json(memo, {"files": files, "content": content})
    return content


def describe_change(old: dict | None, new: dict) -> str:
    """What differs between two data fingerprints, in words ("" when they agree)."""
    if not old:
        return ("it has no data fingerprint (written by an older kit), so whether it is this "
                "data cannot be told")
    if old.get("digest") == new.get("digest"):
        return ""
    changed = [what for part, what in FINGERPRINT_PARTS.items() if old.get(part) != new.get(part)]
    counts = [f"{old.get(k)} → {new.get(k)} {what}" for k, what in
              (("n_train", "train rows"), ("n_test", "test rows"), ("n_genes", "genes"))
              if old.get(k) != new.get(k)]
    return ("changed: " + "; ".join(changed or ["the fingerprint format"])
            + (f" ({', '.join(counts)})" if counts else ""))


def _build_image_cache(data: KitData, split: str, target: Path, size: tuple[int, int] | None,
                       workers: int) -> dict[str, int]:
    """Check the patch sizes, decode the split into `target`; how many files each conversion
    applied to."""
    paths = data.image_paths(split)
    sizes = _image_sizes(paths, workers)
    if size is not None:
        expected, why = tuple(size), "the size asked for"
    else:
        train_sizes = sizes if split == "train" else _image_sizes(data.image_paths("train"),
                                                                  workers)
        (expected, count), = Counter(train_sizes).most_common(1)
        why = f"the size of {count} of the {len(train_sizes)} train patches"
    wrong = [i for i, s in enumerate(sizes) if s != expected]
    if wrong and (split == "train" or size is not None):
        examples = ", ".join(f"{paths[i]} is {sizes[i][1]}x{sizes[i][0]}" for i in wrong[:5])
        raise DataError(f"{split}.csv: {len(wrong)} of {len(paths)} patches have another size "
                        f"than expected {expected[1]}x{expected[0]} (WxH, {why}): {examples}")
    return _write_image_cache(paths, target, expected, workers)


def _image_sizes(paths: list[Path], workers: int) -> list[tuple[int, int]]:
    """(height, width) of every image file, read from the headers only."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_image_size, paths))


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file; an unreadable file names itself."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


# What becomes of a patch that is not 8-bit RGB of the train size (the key is counted per file).
CONVERSIONS = {
    "greyscale": "greyscale (8-bit or 1-bit), replicated to the three RGB channels",
    "greyscale 16-bit": "16-bit greyscale, scaled to 8 bits (round(v * 255 / 65535)) and "
                        "replicated to RGB",
    "alpha": "with an alpha channel (RGBA, greyscale+alpha, transparent palette), composited "
             "over white (opaque pixels keep their colour)",
    "palette": "palette colours, expanded to RGB",
    "CMYK/YCbCr": "CMYK or YCbCr, converted to RGB by PIL",
    "resized": "test patches of another size than the train patches, resized (bicubic)",
}
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I")


def decode_image(path: Path, size: tuple[int, int],
                 resize: bool = False) -> tuple[np.ndarray, str | None]:
    """One patch as uint8 (H, W, 3) and the CONVERSIONS key applied (None: it was RGB). An
    undecodable, fully transparent or wrong-size file (unless `resize`) names the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array, note = _to_rgb(im, path)
    except DataError:
        raise
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    if array.shape[:2] != tuple(size):
        if not resize:
            raise DataError(f"{path}: image is {array.shape[1]}x{array.shape[0]} (WxH); "
                            f"expected {size[1]}x{size[0]} like the other patches")
        image = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        array, note = np.asarray(image), "resized"
    return array, note


def _to_rgb(im, path: Path) -> tuple[np.ndarray, str | None]:
    """A decoded PIL image as uint8 RGB and the conversion used (see CONVERSIONS)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), None
    if mode in ("L", "1"):
        return np.asarray(im.convert("RGB")), "greyscale"
    if mode in _GREY16_MODES:
        grey = np.asarray(im).astype(np.int64).clip(0, 65535)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), "greyscale 16-bit"
    if mode in ("CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB")), "CMYK/YCbCr"
    has_alpha = mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if mode == "P" and not has_alpha:
        return np.asarray(im.convert("RGB")), "palette"
    if not has_alpha:
        raise DataError(f"{path}: unsupported image mode {mode!r}; expected RGB, RGBA, "
                        f"greyscale (8 or 16 bit) or palette")
    rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
    alpha = rgba[..., 3:] / 255.0
    if not alpha.any():
        raise DataError(f"{path}: the patch is fully transparent (alpha 0 in every pixel); "
                        f"expected a patch with visible tissue")
    return np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8), "alpha"


def _write_image_cache(paths: list[Path], target: Path, size: tuple[int, int],
                       workers: int, chunk: int = 256) -> dict[str, int]:
    """Decode images in threads and stream them into an .npy file, renamed into place at the
    end; how many files each conversion applied to.

    Streaming with plain writes (not a memmap) keeps the resident memory to one chunk.
    """
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), *size, 3)}
    notes: Counter = Counter()
    with atomic_path(target) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(workers) as pool:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(paths), chunk):
            batch = paths[start:start + chunk]
            for array, note in pool.map(decode_image, batch, [size] * len(batch),
                                        [True] * len(batch)):
                f.write(array.tobytes())
                notes[note] += 1
    notes.pop(None, None)
    return dict(sorted(notes.items()))


def _warn_conversions(split: str, conversions: dict[str, int], n: int) -> None:
    """One warning listing how many of a split's patches each conversion applied to (on every
    call: the counts are stored with the cache)."""
    if conversions:
        parts = "; ".join(f"{count} {CONVERSIONS[key]}" for key, count in conversions.items())
        warn_every_time(f"{split}: {sum(conversions.values())} of {n} patches were converted to "
                        f"8-bit RGB: {parts} (see utils.data.CONVERSIONS)",
                        ImageConversionWarning, stacklevel=3)


# --- torch dataset ----------------------------------------------------------------------------

class PatchDataset:
    """Map-style dataset for torch's DataLoader over cached uint8 patches.

    Items are `(image, target)` or `image` alone when there are no targets; `image` is a uint8
    CHW tensor (normalisation and resizing happen on the device, from the model's data config).
    `transform` is an albumentations transform that returns a uint8 HWC image.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray | None = None,
                 indices: np.ndarray | None = None, transform=None):
        self.images, self.targets, self.transform = images, targets, transform
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        import torch

        row = self.indices[i]
        image = np.asarray(self.images[row])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.targets is None:
            return tensor
        return tensor, torch.from_numpy(np.asarray(self.targets[row], dtype=np.float32))


def describe(data: KitData) -> str:
    """A few lines on what was loaded."""
    y = data.y
    return (f"data: {data.root}\n"
            f"train: {len(data.train)} spots x {len(data.genes)} genes; test: {len(data.test)} "
            f"spots\ntargets: min {y.min():.3g}, mean {y.mean():.3g}, max {y.max():.3g}; "
            f"{(y < 0).mean():.2%} negative, {(y == 0).mean():.1%} exact zeros")
