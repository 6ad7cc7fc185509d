"""Write a synthetic DACON-shaped H&E → expression data set, so the kit runs with no real data.

Smooth latent factors per spot (nuclei density and size, eosin, fat: drawn; two hidden ones: not)
drive gene modules with slice batch effects; extras: `demo_slices.csv`, `demo_test_truth.csv`."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PARAMS_FILE = "demo_params.json"
GENERATOR_VERSION = 3
OUTPUTS = ("train.csv", "test.csv", "sample_submission.csv", "demo_test_truth.csv", "train", "test")
FACTORS = ("nuclei_density", "nuclei_size", "eosin", "fat", "hidden_1", "hidden_2")
N_MODULES = 14
H_STAIN, E_STAIN = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
UNSTAINED = np.array([0.02, 0.05, 0.14], np.float32)  # optical density of yellowish tissue
CHUNK = 64  # images per rendering task
MT_GENES = ["MT-" + g for g in "ND1 ND2 CO1 CO2 ATP8 ATP6 CO3 ND3 ND4L ND4 ND5 ND6 CYB".split()]
RIBO_GENES = ([f"RPL{i}" for i in [*range(3, 42), "7A", "10A", "13A", "27A", "P0", "P1", "P2"]]
              + [f"RPS{i}" for i in [*range(2, 30), "3A", "4X", "15A", "27A"]])
LIVER_GENES = ("ALB APOA1 APOA2 APOC3 APOH APOE APOB HP HPX FGA FGB FGG SAA1 SAA2 CRP CYP3A4 "
               "CYP2E1 CYP1A2 CYP2A6 GLUL TF TTR SERPINA1 AHSG ORM1 RBP4 AMBP VTN C3 HAMP ALDOB "
               "TAT ASGR1 CPS1 ARG1 FABP1 MGST1 ADH1B HAL SDS").split()
STEMS = np.array("TMEM CCDC FAM ANKRD LRRC KIAA WDR ZC3H KLHL TBC1D ARHGAP DNAJC PPP1R".split())
FAMILIES = ("mt", "ribo", "liver", "clone", "linc", "znf", "slc", "other")
FAMILY_FRACTION = (13 / 3467, 0.022, 0.012, 0.14, 0.03, 0.035, 0.03)  # "other" takes the rest
FAMILY_MODULE = (0, 1, 2, 3, 3, -1, -1, -1)  # preferred module; -1: any
FAMILY_LOG_SHIFT = (4.5, 3.0, 3.5, -1.2, -1.0, 0.0, 0.0, 0.0)  # family's log-abundance offset


def _ints(rng: np.random.Generator, low: int, high: int, k: int, width: int = 0) -> np.ndarray:
    """k random integers as strings, zero-padded to width."""
    return np.char.zfill(rng.integers(low, high, k).astype(str), width)


def _name_pools(rng: np.random.Generator, k: int) -> list[np.ndarray]:
    """Candidate names for every family (as FAMILIES), about 3·k of each generated one."""
    a, c, m = np.char.add, rng.choice, 3 * k + 50
    clone = a(a(c(["AC", "AL", "AP"], m, p=[0.6, 0.3, 0.1]), _ints(rng, 0, 10**6, m, 6)),
              a(".", _ints(rng, 1, 10, m)))
    slc = a(a(a("SLC", _ints(rng, 1, 46, m)), c(list("AAAOB"), m)), _ints(rng, 1, 30, m))
    cons, vow = list("BCDGHKLMNPRSTVWZ"), list("AEIOU")
    made_up = a(a(a(c(cons, m), c(vow, m)), c(cons, m)), _ints(rng, 1, 20, m))
    stems = a(a(c(STEMS, m), _ints(rng, 1, 300, m)), c(["", "", "A", "B"], m))
    other = np.where(rng.random(m) < 0.5, stems, made_up)
    other = other[(label_families(other) == len(FAMILIES) - 1) & ~np.char.startswith(other, "RP")]
    return [np.array(MT_GENES), np.array(RIBO_GENES), np.array(LIVER_GENES), clone,
            a("LINC", _ints(rng, 0, 2700, m, 5)), a("ZNF", _ints(rng, 1, 900, m)), slc, other]


def make_gene_names(n_genes: int, seed: int = 0) -> list[str]:
    """Unique gene names shaped like the real 3467-gene list (clones, LINC, MT-, RPL/RPS, …)."""
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    rng = np.random.default_rng([seed, 11])
    names: list[str] = []
    for i, pool in enumerate(_name_pools(rng, n_genes)):  # eight families, not genes
        pool = pool[rng.permutation(len(pool))]
        pool = pool[np.sort(np.unique(pool, return_index=True)[1])]  # prefixes keep families apart
        share = FAMILY_FRACTION[i] * n_genes if i < len(FAMILY_FRACTION) else n_genes - len(names)
        names += pool[:max(1, round(share))].tolist()
    return np.array(names)[rng.permutation(len(names))][:n_genes].tolist()  # n < 8: one each


def label_families(names: list[str] | np.ndarray) -> np.ndarray:
    """Family index (see FAMILIES) of each gene name, by prefix."""
    n, s = np.array(names), np.char.startswith
    clone = (s(n, "AC") | s(n, "AL") | s(n, "AP")) & (np.char.find(n, ".") > 0)
    masks = [s(n, "MT-"), s(n, "RPL") | s(n, "RPS"), np.isin(n, LIVER_GENES), clone,
             s(n, "LINC"), s(n, "ZNF"), s(n, "SLC")]
    return np.select(masks, np.arange(len(masks)), default=len(masks))


def make_slice_factors(n_spots: int, rng: np.random.Generator) -> np.ndarray:
    """(n_spots, 6) latent factors, smooth over a row-major grid: sums of random Gaussian bumps."""
    cols, idx = int(np.ceil(np.sqrt(n_spots * 1.3))), np.arange(n_spots)
    xy = np.stack([idx % cols, idx // cols], axis=1) / cols
    n_f, n_bumps = len(FACTORS), 8
    centers = rng.uniform(-0.2, 1.2, (n_f, n_bumps, 1, 2))
    widths = rng.uniform(0.12, 0.35, (n_f, n_bumps, 1))
    d2 = ((xy - centers) ** 2).sum(-1)  # (factor, bump, spot)
    f = (rng.normal(0, 1, (n_f, n_bumps, 1)) * np.exp(-d2 / (2 * widths**2))).sum(1)
    f = (f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + 1e-9)
    f = f * rng.uniform(0.7, 1.2, (n_f, 1)) + rng.normal(0, 0.35, (n_f, 1))  # slice shift
    return (f + 0.25 * rng.standard_normal(f.shape)).T


def simulate_expression(factors: np.ndarray, slices: np.ndarray, names: list[str],
                        seed: int) -> np.ndarray:
    """Log-normalised, batch-shifted expression (spots, genes) float32, in row chunks."""
    rng = np.random.default_rng([seed, 3])
    fam, n_g, n_s, n_f = label_families(names), len(names), int(slices.max()) + 1, len(FACTORS)
    w = rng.normal(0, 1, (N_MODULES, n_f)) * [0.5, 0.35, 0.45, 0.45, 0.35, 0.35]
    w[:3] += [[0.2, 0, 0, 0, 0.6, 0], [0.5, 0, 0, 0, 0, 0.2], [-0.3, 0, 0.5, -0.2, 0, 0]]
    pref = np.array(FAMILY_MODULE)[fam]
    module = np.where((pref >= 0) & (rng.random(n_g) < 0.8), pref, rng.integers(2, N_MODULES, n_g))
    strength = rng.lognormal(0, 0.3, n_g) * np.where((rng.random(n_g) < 0.15) & (fam > 1), -1, 1)
    load = (strength[:, None] * w[module] + rng.normal(0, 0.12, (n_g, n_f))).T
    batch = rng.normal(0, 0.15, (n_s, N_MODULES))[:, module] * strength
    log_p = rng.normal(np.log(4e-5), 1.5, n_g) + np.array(FAMILY_LOG_SHIFT)[fam]
    p = np.exp(np.clip(log_p, np.log(2e-7), np.log(3e-2)))
    shape = 1 / rng.lognormal(np.log(0.15), 0.6, n_g)  # negative binomial: 1 / dispersion
    offset = 0.03 * rng.random((n_s, n_g)) * (rng.random((n_s, n_g)) < 0.15)  # batch correction
    lib = np.exp(rng.normal(np.log(6000), 0.35, len(slices)) + 0.15 * factors[:, 0])
    y = np.empty((len(slices), n_g), np.float32)
    for start in range(0, len(slices), 1024):  # row chunks bound memory
        rows, r = slice(start, start + 1024), np.random.default_rng([seed, 4, start])
        eta = factors[rows] @ load + batch[slices[rows]]
        frac = np.minimum(p * np.exp(eta), 0.05)  # no gene takes over a spot
        rate = r.gamma(shape, 1 / shape, eta.shape) * frac * lib[rows, None]
        y[rows] = np.log1p(r.poisson(rate) / lib[rows, None] * 1e4) - offset[slices[rows]]
    return y


def make_stains(n_slices: int, seed: int) -> np.ndarray:
    """(n_slices, 3, 3): unit H and E vectors and per-stain gains; the last slice is shifted."""
    rng = np.random.default_rng([seed, 6])
    h, e = (v + rng.normal(0, 0.008, (n_slices, 3)) for v in (H_STAIN, E_STAIN))
    gain = rng.uniform(0.95, 1.05, (n_slices, 3))
    h[-1] += [0.07, -0.08, 0.07]  # the unseen test slice: bluer haematoxylin, darker staining
    gain[-1, :2] *= [1.1, 1.15]
    h, e = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (h, e))
    return np.stack([h, e, gain], axis=1)


def _render_masks(density: float, nsize: float, fat: float, size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue mask (0 in fat/lumen) and nuclei mask, both in [0, 1]."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from scipy.special import ndtri

    small = gaussian_filter(rng.standard_normal((18, 18)), 1.0, mode="wrap")
    small = Image.fromarray((small / small.std()).astype(np.float32), mode="F")
    field = np.asarray(small.resize((size, size), Image.BICUBIC))
    thr = ndtri(1 - 1 / (1 + math.exp(2.6 - fat)))  # white fraction: 7 % at fat = 0
    tissue = 1 - np.clip((field - np.float32(thr)) * 3 + 0.5, 0, 1)
    n = rng.poisson(40 * math.exp(0.45 * density))  # per patch: the field of view is fixed
    where, weight = rng.integers(0, size, (2, n)), rng.uniform(0.6, 1.4, n)
    imp = np.bincount(where[0] * size + where[1], weight, size * size).reshape(size, size)
    sigma = max(0.7, 3.6 * math.exp(0.2 * nsize) * size / 224)
    blob = gaussian_filter(imp.astype(np.float32), sigma, truncate=3) * (2 * np.pi * sigma**2)
    t = np.clip((blob - 0.3) * 4, 0, 1)
    return tissue, t * t * (3 - 2 * t) * tissue


def render_patch(f: np.ndarray, stain: np.ndarray, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """One H&E-like RGB patch (uint8) from a spot's factors, via Beer–Lambert optical density."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    density, nsize, eosin, fat = (float(v) for v in f[:4])  # python floats keep float32
    tissue, nuc = _render_masks(density, nsize, fat, size, rng)
    k, half = size / 224, (size + 1) // 2  # fibres are drawn at half resolution, then resized
    sig = (0.6 * k, 3 * k) if rng.random() < 0.5 else (3 * k, 0.6 * k)
    fib = gaussian_filter(rng.standard_normal((half, half), dtype=np.float32), sig, truncate=3)
    fib = np.asarray(Image.fromarray(fib, mode="F").resize((size, size), Image.BILINEAR))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    speckle = gaussian_filter(noise, max(0.5, k), truncate=3)
    grain = gaussian_filter(speckle, 1.7 * k, truncate=3)
    fib = np.clip(fib * (2 / fib.std()), -1, 1) + grain * (0.6 / grain.std())
    chrom = 0.85 + 0.15 * np.clip(speckle * (4 / speckle.std()), -1, 1)
    h = tissue * (0.05 + 0.03 * fib) + 1.4 * nuc * chrom
    e = tissue * (0.42 * math.exp(0.3 * eosin)) * (1 + 0.18 * fib) * (1 - 0.8 * nuc)
    vec = (stain[:2] * stain[2, :2, None]).astype(np.float32)
    od = h[..., None] * vec[0] + e[..., None] * vec[1] + tissue[..., None] * UNSTAINED + 0.03
    rgb = 255 * np.exp(-od) + rng.random(od.shape, dtype=np.float32)  # dithered rounding
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _render_chunk(args: tuple) -> None:
    """Render and save one chunk of patches (a pool task, seeded by its first row)."""
    from PIL import Image

    factors, stains, slices, paths, size, seed, start = args
    rng = np.random.default_rng([seed, 7, start])
    for f, s, path in zip(factors, slices, paths):
        Image.fromarray(render_patch(f, stains[s], size, rng)).save(path, compress_level=1)


def _render_all(factors: np.ndarray, slices: np.ndarray, paths: list[Path], size: int,
                seed: int, workers: int) -> None:
    """Render every patch, chunk by chunk, on `workers` threads (numpy, scipy, PIL free the GIL)."""
    stains = make_stains(int(slices.max()) + 1, seed)
    tasks = [(factors[i:i + CHUNK], stains, slices[i:i + CHUNK], paths[i:i + CHUNK], size, seed,
              i) for i in range(0, len(paths), CHUNK)]
    pool = ThreadPoolExecutor(max(1, workers))  # threads: safe in notebooks and scripts
    try:
        list(pool.map(_render_chunk, tasks))
    finally:  # on an error or Ctrl-C, drop the chunks not started yet
        pool.shutdown(cancel_futures=True)


def _write_tables(folder: Path, names: list[str], y: np.ndarray, slices: np.ndarray,
                  n_train: int) -> None:
    """train.csv, test.csv, sample_submission.csv and the demo-only truth and slice files."""
    import pandas as pd

    ids = {"train": [f"TRAIN_{i:04d}" for i in range(n_train)],
           "test": [f"TEST_{i:04d}" for i in range(len(y) - n_train)]}
    paths = {split: [f"./{split}/{i}.png" for i in ids[split]] for split in ids}
    tables = {"train.csv": ("train", y[:n_train]), "test.csv": ("test", y[n_train:, :0]),
              "demo_test_truth.csv": ("test", y[n_train:]),
              "sample_submission.csv": ("test", np.zeros((len(y) - n_train, len(names))))}
    for name, (split, values) in tables.items():  # four files, not genes
        frame = pd.DataFrame(values, columns=names[:values.shape[1]])  # test.csv: no genes
        frame.insert(0, "ID", ids[split])
        if name in ("train.csv", "test.csv"):
            frame.insert(1, "path", paths[split])
        frame.to_csv(folder / name, index=False, float_format="%.5g")
    pd.DataFrame({"ID": ids["train"], "slice": [f"slice_{s + 1}" for s in slices[:n_train]]}
                 ).to_csv(folder / "demo_slices.csv", index=False)


def write_demo(out_dir: str | os.PathLike, n_train: int = 600, n_test: int = 200,
               n_genes: int = 3467, n_train_slices: int = 3, image_size: int = 224,
               seed: int = 0, overwrite: bool = False, workers: int = 2) -> Path:
    """Write the demo set into `out_dir`, atomically; skipped if it already holds this one."""
    out = Path(out_dir).absolute()
    params = {"n_train": n_train, "n_test": n_test, "n_genes": n_genes,
              "n_train_slices": n_train_slices, "image_size": image_size, "seed": seed,
              "version": GENERATOR_VERSION}
    if min(n_test, n_genes, n_train_slices, image_size - 7) < 1 or n_train < n_train_slices:
        raise ValueError(f"need n_test, n_genes, n_train_slices >= 1, n_train >= n_train_slices "
                         f"and image_size >= 8; got {params}")
    done = all((out / name).exists() for name in (*OUTPUTS, PARAMS_FILE))
    old = json.loads((out / PARAMS_FILE).read_text()) if done else None
    if old == params and not overwrite:
        return out
    if out.exists() and not ((out / PARAMS_FILE).is_file()
                             or (out.is_dir() and not any(out.iterdir()))):
        raise FileExistsError(f"{out} holds files that are not a demo set: refusing to write "
                              "there (even with overwrite); choose a new or empty folder")
    if old is not None and {**old, "version": GENERATOR_VERSION} != params and not overwrite:
        raise FileExistsError(f"{out} holds a demo set made with other arguments {old}; pass "
                              "overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # renamed into place when complete
    try:
        _write_demo_files(tmp, params, workers)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_demo_files(folder: Path, params: dict, workers: int) -> None:
    """Generate factors, expression, images and tables into `folder`, params file last."""
    seed, n_train, n_slices = params["seed"], params["n_train"], params["n_train_slices"]
    sizes = [len(a) for a in np.array_split(np.arange(n_train), n_slices)] + [params["n_test"]]
    factors = np.concatenate([make_slice_factors(n, np.random.default_rng([seed, 1, s]))
                              for s, n in enumerate(sizes)])
    slices = np.repeat(np.arange(len(sizes)), sizes)
    names = make_gene_names(params["n_genes"], seed)
    y = simulate_expression(factors, slices, names, seed)
    for rows in (np.arange(n_train), np.arange(n_train, len(y))):  # no constant gene per split
        const = np.flatnonzero(np.ptp(y[rows], axis=0) == 0)
        pick = rows[np.random.default_rng([seed, 5, rows[0]]).integers(0, len(rows), len(const))]
        y[pick, const] += np.float32(np.log1p(1e4 / 6000))  # one count at one spot
    paths = [folder / "train" / f"TRAIN_{i:04d}.png" for i in range(n_train)]
    paths += [folder / "test" / f"TEST_{i:04d}.png" for i in range(len(y) - n_train)]
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
    _render_all(factors, slices, paths, params["image_size"], seed, workers)
    _write_tables(folder, names, y, slices, n_train)
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m utils.dev.demo OUT_DIR [--n-train N] [--overwrite] ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    for name, default in (("n-train", 600), ("n-test", 200), ("n-genes", 3467), ("seed", 0),
                          ("n-train-slices", 3), ("image-size", 224), ("workers", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--overwrite", action="store_true", help="replace an older demo set")
    args = vars(parser.parse_args(argv))
    params_file, start = Path(args["out_dir"]) / PARAMS_FILE, time.perf_counter()
    before = params_file.stat().st_mtime_ns if params_file.exists() else None
    out = write_demo(args.pop("out_dir"), **args)
    if params_file.stat().st_mtime_ns == before:
        print(f"demo set in {out} is complete with these arguments: skipped")
        return
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"demo set in {out}: {args['n_train']} train + {args['n_test']} test patches, "
          f"{args['n_genes']} genes, {mb:.1f} MB in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
