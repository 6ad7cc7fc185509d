"""Write a synthetic DACON-shaped H&E → expression data set, so the kit runs with no real data.

Each spot has smooth latent factors over its slice's grid: nuclei density, nuclei size, eosin,
fat/lumen (all drawn into the patch) and two hidden ones (not drawn). Gene modules load on all
six plus a slice batch effect; counts are negative binomial, then log-normalised. Extra files the
real data lacks: `demo_slices.csv` (train slice per row) and `demo_test_truth.csv`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

PARAMS_FILE = "demo_params.json"
GENERATOR_VERSION = 2
FACTORS = ("nuclei_density", "nuclei_size", "eosin", "fat", "hidden_1", "hidden_2")
N_MODULES = 14
H_STAIN, E_STAIN = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
CHUNK = 64  # images per rendering task
MT_GENES = ("MT-ND1 MT-ND2 MT-CO1 MT-CO2 MT-ATP8 MT-ATP6 MT-CO3 MT-ND3 MT-ND4L MT-ND4 MT-ND5 "
            "MT-ND6 MT-CYB").split()
RIBO_GENES = [f"RPL{i}" for i in "3 4 5 6 7 7A 8 9 10 10A 11 12 13 13A 14 15 17 18 18A 19 21 22 "
              "23 23A 24 26 27 27A 28 29 30 31 32 34 35 35A 36 37 37A 38 39 41 P0 P1 P2".split()]
RIBO_GENES += [f"RPS{i}" for i in "2 3 3A 4X 5 6 7 8 9 10 11 12 13 14 15 15A 16 17 18 19 20 21 "
               "23 24 25 26 27 27A 28 29".split()]
LIVER_GENES = ("ALB APOA1 APOA2 APOC3 APOH APOE APOB HP HPX FGA FGB FGG SAA1 SAA2 CRP CYP3A4 "
               "CYP2E1 CYP1A2 CYP2A6 GLUL TF TTR SERPINA1 AHSG ORM1 RBP4 AMBP VTN C3 HAMP ALDOB "
               "TAT ASGR1 CPS1 ARG1 FABP1 MGST1 ADH1B HAL SDS").split()
STEMS = np.array("TMEM CCDC FAM ANKRD LRRC KIAA WDR ZC3H KLHL TBC1D ARHGAP DNAJC PPP1R".split())
FAMILIES = ("mt", "ribo", "liver", "clone", "linc", "znf", "slc", "other")
FAMILY_FRACTION = (13 / 3467, 0.022, 0.012, 0.14, 0.03, 0.035, 0.03)
FAMILY_MODULE = (0, 1, 2, 3, 3, -1, -1, -1)  # preferred module; -1: any
FAMILY_LOG_SHIFT = (4.5, 3.0, 3.5, -1.2, -1.0, 0.0, 0.0, 0.0)  # family's log-abundance offset


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int, taken: list[str]) -> list[str]:
    """k distinct names from pool (in random order), skipping names already taken."""
    pool = pool[rng.permutation(len(pool))]
    fresh = pool[np.sort(np.unique(pool, return_index=True)[1])]
    return fresh[~np.isin(fresh, np.array(taken, dtype=str))][:k].tolist()


def _ints(rng: np.random.Generator, low: int, high: int, k: int, width: int = 0) -> np.ndarray:
    """k random integers as strings, zero-padded to width."""
    return np.char.zfill(rng.integers(low, high, k).astype(str), width)


def _name_pools(rng: np.random.Generator, k: int) -> list[np.ndarray]:
    """Candidate names for every family, about 3·k of each generated one."""
    a = np.char.add
    m = 3 * k + 50
    clone = a(a(rng.choice(["AC", "AL", "AP"], m, p=[0.6, 0.3, 0.1]), _ints(rng, 0, 10**6, m, 6)),
              a(".", _ints(rng, 1, 10, m)))
    slc = a(a(a("SLC", _ints(rng, 1, 46, m)), rng.choice(["A", "A", "A", "O", "B"], m)),
            _ints(rng, 1, 30, m))
    cons, vow = np.array(list("BCDGHKLMNPRSTVWZ")), np.array(list("AEIOU"))
    made_up = a(a(rng.choice(cons, m), rng.choice(vow, m)), rng.choice(cons, m))
    made_up = a(a(made_up, rng.choice(np.append(cons, [""] * 24), m)), _ints(rng, 1, 20, m))
    stems = a(a(rng.choice(STEMS, m), _ints(rng, 1, 300, m)), rng.choice(["", "", "A", "B"], m))
    other = np.where(rng.random(m) < 0.5, stems, made_up)
    other = other[(label_families(other) == len(FAMILIES) - 1) & ~np.char.startswith(other, "RP")]
    return [np.array(MT_GENES), np.array(RIBO_GENES), np.array(LIVER_GENES), clone,
            a("LINC", _ints(rng, 0, 2700, m, 5)), a("ZNF", _ints(rng, 1, 900, m)), slc, other]


def make_gene_names(n_genes: int, seed: int = 0) -> list[str]:
    """Unique gene names shaped like the real 3467-gene list (clones, LINC, MT-, RPL/RPS, …)."""
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    rng = np.random.default_rng([seed, 11])
    pools = _name_pools(rng, n_genes)
    counts = [max(1, round(f * n_genes)) for f in FAMILY_FRACTION]
    counts.append(max(1, n_genes - sum(counts)))
    names: list[str] = []
    for pool, k in zip(pools, counts):  # eight families, not genes
        names += _pick(rng, pool, k, names)
    names += _pick(rng, pools[-1], max(0, n_genes - len(names)), names)  # families that ran short
    return np.array(names)[rng.permutation(len(names))][:n_genes].tolist()  # n < 8: one each


def label_families(names: list[str] | np.ndarray) -> np.ndarray:
    """Family index (see FAMILIES) of each gene name, by prefix."""
    n = np.array(names)
    s = np.char.startswith
    clone = (s(n, "AC") | s(n, "AL") | s(n, "AP")) & (np.char.find(n, ".") > 0)
    masks = [s(n, "MT-"), s(n, "RPL") | s(n, "RPS"), np.isin(n, LIVER_GENES), clone,
             s(n, "LINC"), s(n, "ZNF"), s(n, "SLC")]
    return np.select(masks, np.arange(len(masks)), default=len(masks))


def make_slice_factors(n_spots: int, rng: np.random.Generator) -> np.ndarray:
    """(n_spots, 6) latent factors, smooth over a row-major grid: sums of random Gaussian bumps."""
    cols = int(np.ceil(np.sqrt(n_spots * 1.3)))
    idx = np.arange(n_spots)
    xy = np.stack([idx % cols, idx // cols], axis=1) / cols
    n_f, n_bumps = len(FACTORS), 8
    centers = rng.uniform(-0.2, 1.2, (n_f, n_bumps, 1, 2))
    widths = rng.uniform(0.12, 0.35, (n_f, n_bumps, 1))
    d2 = ((xy - centers) ** 2).sum(-1)  # (factor, bump, spot)
    f = (rng.normal(0, 1, (n_f, n_bumps, 1)) * np.exp(-d2 / (2 * widths**2))).sum(1)
    f = (f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + 1e-9)
    f = f * rng.uniform(0.7, 1.2, (n_f, 1)) + rng.normal(0, 0.35, (n_f, 1))  # slice shift
    return (f + 0.25 * rng.standard_normal(f.shape)).T


def _gene_params(names: list[str], n_slices: int, rng: np.random.Generator) -> dict:
    """Per-gene abundance, dispersion, factor loadings (via modules) and slice batch effects."""
    fam = label_families(names)
    n_g, n_f = len(names), len(FACTORS)
    w = rng.normal(0, 1, (N_MODULES, n_f)) * [0.5, 0.35, 0.45, 0.45, 0.35, 0.35]
    w[:3] += [[0.2, 0, 0, 0, 0.6, 0], [0.5, 0, 0, 0, 0, 0.2], [-0.3, 0, 0.5, -0.2, 0, 0]]
    pref = np.array(FAMILY_MODULE)[fam]
    module = np.where((pref >= 0) & (rng.random(n_g) < 0.8), pref, rng.integers(2, N_MODULES, n_g))
    strength = rng.lognormal(0, 0.3, n_g) * np.where(rng.random(n_g) < 0.15, -1, 1)
    load = strength[:, None] * w[module] + rng.normal(0, 0.12, (n_g, n_f))
    batch = rng.normal(0, 0.15, (n_slices, N_MODULES))[:, module] * strength
    log_p = rng.normal(np.log(4e-5), 1.5, n_g) + np.array(FAMILY_LOG_SHIFT)[fam]
    return {"p": np.exp(np.clip(log_p, np.log(2e-7), np.log(3e-2))), "load": load.T,
            "batch": batch, "phi": rng.lognormal(np.log(0.15), 0.6, n_g),
            "offset": 0.03 * rng.random((n_slices, n_g)) * (rng.random((n_slices, n_g)) < 0.15)}


def simulate_expression(factors: np.ndarray, slices: np.ndarray, names: list[str],
                        seed: int) -> np.ndarray:
    """Log-normalised, batch-shifted expression (spots, genes) float32, in row chunks."""
    rng = np.random.default_rng([seed, 3])
    gp = _gene_params(names, int(slices.max()) + 1, rng)
    lib = np.exp(rng.normal(np.log(6000), 0.35, len(slices)) + 0.15 * factors[:, 0])
    y = np.empty((len(slices), len(names)), np.float32)
    for start in range(0, len(slices), 1024):  # row chunks bound memory
        rows, r = slice(start, start + 1024), np.random.default_rng([seed, 4, start])
        s = slices[rows]
        eta = factors[rows] @ gp["load"] + gp["batch"][s]
        shape = 1 / gp["phi"]
        frac = np.minimum(gp["p"] * np.exp(eta), 0.05)  # no gene takes over a spot
        rate = r.gamma(shape, 1 / shape, eta.shape) * frac * lib[rows, None]
        y[rows] = np.log1p(r.poisson(rate) / lib[rows, None] * 1e4) - gp["offset"][s]
    return y


def _vary_constant_columns(y: np.ndarray, rows: np.ndarray, seed: int) -> None:
    """Give every gene that is constant over `rows` one count at one random row (in place)."""
    const = np.flatnonzero(np.ptp(y[rows], axis=0) == 0)
    pick = rows[np.random.default_rng([seed, 5]).integers(0, len(rows), len(const))]
    y[pick, const] += np.float32(np.log1p(1e4 / 6000))


def make_stains(n_slices: int, seed: int) -> np.ndarray:
    """(n_slices, 3, 3) rows: unit H and E vectors and a per-stain intensity; last is shifted."""
    rng = np.random.default_rng([seed, 6])
    h = H_STAIN + rng.normal(0, 0.015, (n_slices, 3))
    e = E_STAIN + rng.normal(0, 0.015, (n_slices, 3))
    gain = rng.uniform(0.95, 1.05, (n_slices, 3))
    h[-1] += [0.05, -0.06, 0.05]  # the unseen test slice: bluer haematoxylin, stronger eosin
    gain[-1, :2] *= [1.1, 1.15]
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return np.stack([h, e, gain], axis=1)


def _smooth_field(size: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance low-frequency noise, drawn on a coarse grid and resized with bilinear."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    small = gaussian_filter(rng.standard_normal((size // cell + 2,) * 2), 1.0, mode="wrap")
    small = (small / small.std()).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BILINEAR))


def _render_nuclei(density: float, nsize: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Nuclei mask in [0, 1]: Poisson points of random weight, blurred, then smoothstepped."""
    from scipy.ndimage import gaussian_filter

    scale = size / 224
    n = rng.poisson(40 * np.exp(0.45 * density) * scale**2)
    where = rng.integers(0, size, (2, n))
    weight = rng.uniform(0.6, 1.4, n)
    imp = np.bincount(where[0] * size + where[1], weight, size * size).reshape(size, size)
    sigma = max(0.7, 3.6 * np.exp(0.2 * nsize) * scale)
    blob = gaussian_filter(imp, sigma) * (2 * np.pi * sigma**2)
    t = np.clip((blob - 0.3) / 0.25, 0, 1)
    return t * t * (3 - 2 * t)


def render_patch(f: np.ndarray, stain: np.ndarray, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """One H&E-like RGB patch (uint8) from a spot's factors, via Beer–Lambert optical density."""
    from scipy.ndimage import gaussian_filter

    density, nsize, eosin, fat = f[:4]
    p_white = 1 / (1 + np.exp(2.3 - fat))
    from scipy.special import ndtri

    white = np.clip((_smooth_field(size, 10, rng) - ndtri(1 - p_white)) * 3 + 0.5, 0, 1)
    nuc = _render_nuclei(density, nsize, size, rng) * (1 - white)
    noise = rng.standard_normal((3, size, size))
    fib = gaussian_filter(noise[0], (1.2, 6.0) if rng.random() < 0.5 else (6.0, 1.2))
    grain = gaussian_filter(noise[2], 2.0)
    fib = np.tanh(2 * fib / fib.std()) + 0.6 * grain / grain.std()
    chrom = 0.85 + 0.15 * np.tanh(gaussian_filter(noise[1], 1.0) * 4)
    tissue = 1 - white
    h = tissue * (0.05 + 0.03 * fib) + 1.4 * nuc * chrom
    e = tissue * 0.42 * np.exp(0.3 * eosin) * (1 + 0.18 * fib) * (1 - 0.5 * nuc)
    od = h[..., None] * stain[0] * stain[2, 0] + e[..., None] * stain[1] * stain[2, 1]
    od += 0.03 + tissue[..., None] * [0.02, 0.05, 0.14]  # glass; yellowish unstained tissue
    rgb = 255 * np.exp(-od) + rng.normal(0, 1.0, od.shape)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _slice_sizes(n_train: int, n_train_slices: int, n_test: int) -> list[int]:
    """Spots per slice: the train rows split as evenly as possible, then the test slice."""
    base, extra = divmod(n_train, n_train_slices)
    return [base + (i < extra) for i in range(n_train_slices)] + [n_test]


def _render_chunk(args: tuple) -> None:
    """Render and save one chunk of patches (a process-pool task; seeded by its first row)."""
    from PIL import Image

    factors, stains, slices, paths, size, seed, start = args
    rng = np.random.default_rng([seed, 7, start])
    for f, s, path in zip(factors, slices, paths):
        Image.fromarray(render_patch(f, stains[s], size, rng)).save(path, compress_level=1)


def _render_all(factors: np.ndarray, slices: np.ndarray, paths: list[Path], size: int,
                seed: int, workers: int) -> None:
    """Render every patch in chunks, over `workers` processes."""
    from concurrent.futures import ProcessPoolExecutor

    stains = make_stains(int(slices.max()) + 1, seed)
    tasks = [(factors[i:i + CHUNK], stains, slices[i:i + CHUNK], paths[i:i + CHUNK], size, seed,
              i) for i in range(0, len(paths), CHUNK)]
    if workers <= 1:
        for task in tasks:
            _render_chunk(task)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_render_chunk, tasks))


def _write_tables(folder: Path, names: list[str], y: np.ndarray, slices: np.ndarray,
                  n_train: int) -> None:
    """train.csv, test.csv, sample_submission.csv and the demo-only truth/slice files."""
    import pandas as pd

    n_test = len(y) - n_train
    ids = {"train": [f"TRAIN_{i:04d}" for i in range(n_train)],
           "test": [f"TEST_{i:04d}" for i in range(n_test)]}
    frames = {split: pd.DataFrame({"ID": ids[split],
                                   "path": [f"./{split}/{i}.png" for i in ids[split]]})
              for split in ids}
    genes = pd.DataFrame(y, columns=names)
    fmt = {"index": False, "float_format": "%.5g"}
    pd.concat([frames["train"], genes.iloc[:n_train]], axis=1).to_csv(folder / "train.csv", **fmt)
    frames["test"].to_csv(folder / "test.csv", index=False)
    zeros = pd.DataFrame(0.0, index=range(n_test), columns=names)
    pd.concat([frames["test"][["ID"]], zeros], axis=1).to_csv(folder / "sample_submission.csv",
                                                               index=False)
    truth = genes.iloc[n_train:].reset_index(drop=True)
    pd.concat([frames["test"][["ID"]], truth], axis=1).to_csv(folder / "demo_test_truth.csv",
                                                              **fmt)
    pd.DataFrame({"ID": ids["train"], "slice": [f"slice_{s + 1}" for s in slices[:n_train]]}
                 ).to_csv(folder / "demo_slices.csv", index=False)


def write_demo(out_dir: str | os.PathLike, n_train: int = 600, n_test: int = 200,
               n_genes: int = 3467, n_train_slices: int = 3, image_size: int = 224,
               seed: int = 0, overwrite: bool = False, workers: int = 2) -> Path:
    """Write the demo set into `out_dir` (skipped if it already holds the same demo).

    Everything is written to a temporary sibling folder that is renamed into place at the end,
    so an interrupted run never leaves a folder that looks complete.
    """
    out = Path(out_dir)
    params = {"n_train": n_train, "n_test": n_test, "n_genes": n_genes,
              "n_train_slices": n_train_slices, "image_size": image_size, "seed": seed,
              "version": GENERATOR_VERSION}
    if (out / PARAMS_FILE).is_file() and json.loads((out / PARAMS_FILE).read_text()) == params:
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already holds other files (not this demo set); pass "
                              "overwrite=True (--overwrite) or choose another folder")
    if min(n_train, n_test, n_genes, n_train_slices) < 1 or n_train < n_train_slices:
        raise ValueError("n_train, n_test, n_genes, n_train_slices must be >= 1 and n_train >= "
                         "n_train_slices")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_demo_files(tmp, params, workers)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_demo_files(folder: Path, params: dict, workers: int) -> None:
    """Generate factors, expression, images and tables into `folder`, params file last."""
    seed, n_train = params["seed"], params["n_train"]
    sizes = _slice_sizes(n_train, params["n_train_slices"], params["n_test"])
    factors = np.concatenate([make_slice_factors(n, np.random.default_rng([seed, 1, s]))
                              for s, n in enumerate(sizes)])
    slices = np.repeat(np.arange(len(sizes)), sizes)
    names = make_gene_names(params["n_genes"], seed)
    y = simulate_expression(factors, slices, names, seed)
    for rows in (np.arange(n_train), np.arange(n_train, len(y))):
        _vary_constant_columns(y, rows, seed)
    paths = [folder / "train" / f"TRAIN_{i:04d}.png" for i in range(n_train)]
    paths += [folder / "test" / f"TEST_{i:04d}.png" for i in range(len(y) - n_train)]
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    _render_all(factors, slices, paths, params["image_size"], seed, workers)
    _write_tables(folder, names, y, slices, n_train)
    (folder / PARAMS_FILE).write_text(json.dumps(params))


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m utils.demo OUT_DIR [--n-train N] ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    for name, default in (("n-train", 600), ("n-test", 200), ("n-genes", 3467),
                          ("n-train-slices", 3), ("image-size", 224), ("seed", 0),
                          ("workers", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--overwrite", action="store_true")
    args = vars(parser.parse_args(argv))
    start = time.perf_counter()
    out = write_demo(args.pop("out_dir"), **args)
    print(f"demo set in {out} ({time.perf_counter() - start:.1f} s)", file=sys.stdout)


if __name__ == "__main__":
    main()
