"""Duplicate patches: exact copies (the same pixels) and near-copies, within train and between
train and test.

A near-copy is found by a perceptual hash: every patch is turned grey, area-pooled to a 32x32
grid and its 8x8 lowest DCT frequencies are reduced to their signs (63 bits; the DC term is left
out). Flipping or rotating a patch only flips the signs of some frequencies or transposes them,
so the hashes of all eight flips/rotations come from one DCT, and two patches are `NEAR_BITS` or
fewer bits apart in some orientation when one is a re-encoded, re-stained, noisy or flipped copy
of the other. Pairs at distance 0 are compared pixel by pixel: identical ones are `exact`.
(imagehash's `phash` finds the same pairs, but it hashes one orientation of one image per call:
eight calls per patch in a Python loop, where one batched DCT here gives all eight.)

Copies inflate CV when they land on both sides of a split (a model recalls the copy's targets),
so 05 keeps every group of train duplicates in one fold (`utils.cv.make_folds(same_fold=)`);
train–test copies are reported (a test patch already seen in training). The hashes are cached
per split under the image cache's key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.data import KitData, cache_dir_for, images_content_key, load_images
from utils.files import cached_array

HASH_GRID = 32  # patches are area-pooled to this grid before the DCT (smaller patches: their size)
HASH_FREQS = 8  # the HASH_FREQS x HASH_FREQS lowest frequencies, DC left out: 63 bits
NEAR_BITS = 4  # hashes at most this many of the 63 bits apart (some orientation): near-duplicates
ZERO = 1e-3  # |coefficient| below this (grey levels) counts as 0: flat patches hash alike
CHUNK = 128  # patches (or query rows) handled at once


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n x n): `D @ x` transforms a column vector."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def grey_grid(images: np.ndarray, size: int) -> np.ndarray:
    """Mean grey level of every cell of a size x size grid over each (N, H, W, 3) uint8 patch
    (area pooling, in integers; one reshape when the grid divides the patch, as 32 does 224)."""
    n, h, w = images.shape[:3]
    if h % size == 0 and w % size == 0:
        cells = images.reshape(n, size, h // size, size, w // size * 3)
        return cells.sum(axis=(2, 4), dtype=np.uint32) / (3 * (h // size) * (w // size))
    rows = np.linspace(0, h, size + 1).astype(int)
    cols = np.linspace(0, w, size + 1).astype(int)
    sums = np.add.reduceat(images.reshape(n, h, w * 3), rows[:-1], axis=1, dtype=np.uint32)
    sums = np.add.reduceat(sums, cols[:-1] * 3, axis=2)
    return sums / (3 * np.diff(rows)[:, None] * np.diff(cols)[None, :])


def dihedral_hashes(images: np.ndarray) -> np.ndarray:
    """(N, 8) uint64 perceptual hashes of every patch in its eight flips/rotations (column 0:
    as it is). A flip negates the odd frequencies along one axis; a quarter turn adds a
    transpose."""
    size = min(HASH_GRID, *images.shape[1:3])
    d = dct_matrix(size)
    low = (d @ grey_grid(images, size) @ d.T)[:, :HASH_FREQS, :HASH_FREQS]
    sign = (-1.0) ** np.arange(low.shape[1])
    views = [m * su[:, None] * sv[None, :] for m in (low, low.transpose(0, 2, 1))
             for su in (np.ones_like(sign), sign) for sv in (np.ones_like(sign), sign)]
    bits = (np.stack(views, axis=1) > ZERO).reshape(len(images), 8, -1)[..., 1:]  # no DC
    weights = np.left_shift(np.uint64(1), np.arange(bits.shape[-1], dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)


def image_hashes(images: np.ndarray) -> np.ndarray:
    """`dihedral_hashes` of a split, a chunk of patches at a time (the images may be a memmap)."""
    if not len(images):
        return np.zeros((0, 8), np.uint64)
    return np.concatenate([dihedral_hashes(np.asarray(images[i:i + CHUNK]))
                           for i in range(0, len(images), CHUNK)])


def cached_hashes(data: KitData, split: str) -> np.ndarray:
    """A split's hashes, cached beside its image cache (keyed on the images' bytes)."""
    key = {"what": "dihedral DCT-sign hashes", "grid": HASH_GRID, "freqs": HASH_FREQS,
           "zero": ZERO, "images": images_content_key(data, split)}
    path = cache_dir_for(data) / "duplicates" / f"{split}_hashes.npy"
    return cached_array(path, key, lambda: image_hashes(load_images(data, split)))


def near_pairs(a: np.ndarray, b: np.ndarray, max_bits: int = NEAR_BITS,
               within: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows i of `a` and j of `b` whose hashes are at most `max_bits` apart in some orientation
    (a's as it is against all eight of b's), with that distance; `within` (a is b): i < j."""
    found = []
    for start in range(0, len(a), CHUNK):
        xor = a[start:start + CHUNK, 0][:, None, None] ^ b[None, :, :]
        bits = np.bitwise_count(xor).min(axis=2)
        if within:
            bits[np.arange(len(bits))[:, None] + start >= np.arange(len(b))[None, :]] = 255
        i, j = np.nonzero(bits <= max_bits)
        found.append((i + start, j, bits[i, j]))
    if not found:
        return (np.zeros(0, int),) * 3
    return tuple(np.concatenate(parts).astype(int) for parts in zip(*found))


@dataclass
class DuplicateAudit:
    """Duplicate pairs of a data set: one row per pair (`where` "train–train" or "train–test",
    `kind` "exact" or "near", rows, IDs and the hash distance in bits)."""

    pairs: pd.DataFrame
    n_train: int
    n_test: int
    max_bits: int = NEAR_BITS

    def counts(self) -> pd.DataFrame:
        """Pairs and distinct patches per place and kind (0 where there are none)."""
        rows = []
        for where in ("train–train", "train–test"):
            for kind in ("exact", "near"):
                sub = self.pairs[(self.pairs["where"] == where) & (self.pairs["kind"] == kind)]
                rows.append({"where": where, "kind": kind, "pairs": len(sub),
                             "train_patches": len(set(sub["row_a"]) | (
                                 set(sub["row_b"]) if where == "train–train" else set())),
                             "test_patches": sub["row_b"].nunique() if where == "train–test"
                             else 0})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line: how many duplicate pairs of each kind, within train and train–test."""
        c = self.counts().set_index(["where", "kind"])["pairs"]
        line = (f"duplicate patches (exact; near: ≤ {self.max_bits} of 63 hash bits): "
                f"within train {c['train–train', 'exact']} exact, {c['train–train', 'near']} "
                f"near pairs; train–test {c['train–test', 'exact']} exact, "
                f"{c['train–test', 'near']} near pairs")
        groups = self.train_groups()
        if (groups >= 0).any():
            line += (f"; {len(np.unique(groups[groups >= 0]))} groups of train duplicates "
                     "(kept in one CV fold each)")
        return line

    def train_groups(self) -> np.ndarray:
        """A group label for every train row: rows linked by duplicate pairs within train share
        one (connected components), rows without a duplicate get -1."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        inside = self.pairs[self.pairs["where"] == "train–train"]
        if inside.empty:
            return np.full(self.n_train, -1)
        graph = coo_matrix((np.ones(len(inside)), (inside["row_a"], inside["row_b"])),
                           shape=(self.n_train, self.n_train))
        _, labels = connected_components(graph, directed=False)
        linked = np.zeros(self.n_train, bool)
        linked[inside["row_a"]] = linked[inside["row_b"]] = True
        return np.where(linked, np.unique(labels, return_inverse=True)[1], -1)


WHERE = ("train–train", "train–test")


def find_duplicates(data: KitData, max_bits: int = NEAR_BITS) -> DuplicateAudit:
    """Every duplicate pair within train and between train and test; the hashes and the pairs
    are cached (a second call with the same images reads them)."""
    key = {"what": "duplicate pairs", "max_bits": max_bits,
           "train": images_content_key(data, "train"),
           "test": images_content_key(data, "test")}
    path = cache_dir_for(data) / "duplicates" / f"pairs_{max_bits}bits.npy"
    table = cached_array(path, key, lambda: pair_table(data, max_bits))
    where, a, b, bits, exact = table.T
    id_b = np.empty(len(b), dtype=object)
    for code, frame in enumerate((data.train, data.test)):
        id_b[where == code] = frame["ID"].to_numpy()[b[where == code]]
    pairs = pd.DataFrame({"where": np.array(WHERE)[where], "kind": np.where(exact, "exact", "near"),
                          "row_a": a, "id_a": data.train["ID"].to_numpy()[a], "row_b": b,
                          "id_b": id_b, "bits": bits})
    return DuplicateAudit(pairs.sort_values(["where", "kind", "bits", "row_a", "row_b"],
                                            ignore_index=True), len(data.train), len(data.test),
                          max_bits)


def pair_table(data: KitData, max_bits: int = NEAR_BITS) -> np.ndarray:
    """(pairs, 5) int64: where (0 within train, 1 train–test), train row, other row, hash bits
    and whether the patches are identical (candidates at 0 bits compared pixel by pixel)."""
    train, test = cached_hashes(data, "train"), cached_hashes(data, "test")
    parts = []
    for code, query, within in ((0, train, True), (1, test, False)):
        q, t, bits = near_pairs(query, train, max_bits, within)
        a, b = (q, t) if within else (t, q)  # a is always a train row
        exact = _identical(data, "train" if within else "test", a, b, bits)
        parts.append(np.stack([np.full(len(a), code), a, b, bits, exact], axis=1))
    return np.concatenate(parts).astype(np.int64)


def _identical(data: KitData, other: str, a: np.ndarray, b: np.ndarray,
               bits: np.ndarray) -> np.ndarray:
    """Whether train patch a[k] equals patch b[k] of `other`, pixel for pixel, for each pair
    (only pairs at 0 bits can be; only then are the patches read)."""
    same = np.zeros(len(a), bool)
    zero = np.flatnonzero(bits == 0)
    if len(zero):
        images = load_images(data, "train", warn=False)  # cached_hashes warned already
        others = load_images(data, other, warn=False)
        for start in range(0, len(zero), CHUNK):
            k = zero[start:start + CHUNK]
            same[k] = (np.asarray(images[a[k]]) == np.asarray(others[b[k]])).all(axis=(1, 2, 3))
    return same
