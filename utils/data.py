"""Load and validate the DACON files; decode every patch once into a memory-mapped cache.

`load_data` reads train.csv, test.csv and sample_submission.csv and refuses anything that would
make a run or a submission silently wrong. `load_images` decodes the PNGs once into a uint8
(N, H, W, 3) `.npy` file (under the kit's `cache/`) and memory-maps it afterwards, so no later
epoch or notebook decodes PNGs again. `PatchDataset` serves that array to a torch DataLoader.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.paths import atomic_path, find_data_dir, kit_root, read_json, write_json

ID_COLUMNS = ("ID", "path")
CACHE_ENV_VAR = "KIT_CACHE_DIR"


class DataError(ValueError):
    """The competition files are inconsistent; the message names the file, rows or columns."""


@dataclass(frozen=True)
class KitData:
    """The validated competition data: IDs and image paths, gene names and train targets."""

    root: Path
    train: pd.DataFrame  # ID, path
    test: pd.DataFrame  # ID, path
    sample: pd.DataFrame  # the sample submission: ID, genes
    genes: list[str]
    y: np.ndarray  # float32 (n_train, n_genes), the targets on their original scale

    def image_paths(self, split: str) -> list[Path]:
        """Absolute image paths of 'train' or 'test', in row order."""
        return [self.root / p for p in _split_frame(self, split)["path"]]


def load_data(data_dir: str | os.PathLike | None = None) -> KitData:
    """Find, read and validate the DACON files (see utils.paths for where it looks)."""
    root = find_data_dir(data_dir)
    train, test, sample = (_read_csv(root / name) for name in
                           ("train.csv", "test.csv", "sample_submission.csv"))
    _check_columns(train, test, sample)
    genes = list(sample.columns[1:])
    y = _read_targets(train, genes, root / "train.csv")
    for frame, name in ((train, "train.csv"), (test, "test.csv"),
                        (sample, "sample_submission.csv")):
        _check_unique_ids(frame, name)
    _check_same_ids(test, sample)
    _check_images_exist(root, train, "train.csv")
    _check_images_exist(root, test, "test.csv")
    return KitData(root=root, train=train[list(ID_COLUMNS)], test=test[list(ID_COLUMNS)],
                   sample=sample, genes=genes, y=y)


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV with ID/path columns read as text, or a DataError naming the file."""
    try:
        return pd.read_csv(path, dtype={"ID": str, "path": str}, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({err})") from err


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
    return y.astype(np.float32)


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
    per data folder. Data folders are never written to (Kaggle input is read-only)."""
    digest = hashlib.sha1(str(data.root).encode()).hexdigest()[:10]
    base = os.environ.get(CACHE_ENV_VAR) or kit_root() / "cache"
    return Path(base) / f"{data.root.name}-{digest}"


def load_images(data: KitData, split: str, cache_dir: str | os.PathLike | None = None,
                size: tuple[int, int] | None = None, workers: int = 4) -> np.ndarray:
    """All patches of a split as a read-only memory-mapped uint8 (N, H, W, 3) array.

    The first call decodes the PNGs into `<cache_dir>/<split>_images.npy`; later calls only map
    it. The cache is rebuilt when the image files change (names, sizes or times). Every patch
    must have `size` (H, W); None takes the first patch's size (224x224 on DACON).
    """
    paths = data.image_paths(split)
    folder = Path(cache_dir) if cache_dir else cache_dir_for(data)
    target, stamp = folder / f"{split}_images.npy", folder / f"{split}_images.json"
    fingerprint = images_fingerprint(data, split, size)
    if target.is_file() and stamp.is_file() and read_json(stamp) == fingerprint:
        return np.load(target, mmap_mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    _write_image_cache(paths, target, size or _image_size(paths[0]), workers)
    write_json(stamp, fingerprint)
    return np.load(target, mmap_mode="r")


def images_fingerprint(data: KitData, split: str,
                       size: tuple[int, int] | None = None) -> dict:
    """What a split's image cache is built from: file names, sizes and modification times."""
    paths, digest = data.image_paths(split), hashlib.sha1()
    for p in paths:
        st = p.stat()
        digest.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return {"n": len(paths), "size": list(size) if size else None, "files": digest.hexdigest()}


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One patch as uint8 (H, W, 3); an undecodable file or a wrong size names the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    if array.shape[:2] != tuple(size):
        raise DataError(f"{path}: image is {array.shape[1]}x{array.shape[0]} (WxH); "
                        f"expected {size[1]}x{size[0]} like the other patches")
    return array


def _write_image_cache(paths: list[Path], target: Path, size: tuple[int, int],
                       workers: int, chunk: int = 256) -> None:
    """Decode images in threads and stream them into an .npy file, renamed into place at the end.

    Streaming with plain writes (not a memmap) keeps the resident memory to one chunk.
    """
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), *size, 3)}
    with atomic_path(target) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(workers) as pool:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(paths), chunk):
            batch = paths[start:start + chunk]
            for array in pool.map(decode_image, batch, [size] * len(batch)):
                f.write(array.tobytes())


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
