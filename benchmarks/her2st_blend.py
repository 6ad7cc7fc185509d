"""Blend her2st runs with notebook 07's machinery and print every score (nested CV) and timing.

    .venv/bin/python -m benchmarks.her2st_blend                     # blocks runs under runs/her2st
    .venv/bin/python -m benchmarks.her2st_blend --runs runs/her2st/a runs/her2st/b
    .venv/bin/python -m benchmarks.her2st_blend --gene-groups runs/her2st/genes/gene_groups.csv \
        --groups kmeans                                            # adds the per-group blend
    .venv/bin/python -m benchmarks.her2st_blend --dacon-scale      # timing at 6992 x 3467, 3 runs

Runs are the run folders written by notebooks/05_train.ipynb on ../shared/her2st. Without
--runs, every finished run under runs/her2st whose folds equal those of the first blocks run is
used, and a run on other folds (if any) shows the refusal message.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from utils import ensemble
from utils.cv import format_cv
from utils.runs import Run, check_folds, check_shapes, find_runs, load_run, peak_rss_gb

HER2ST = Path(__file__).resolve().parent.parent.parent / "shared" / "her2st"
SHRINKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def pick_runs(paths: list[str] | None, root: str) -> list[Run]:
    """The listed runs, or the blocks-CV runs under root (showing the refusal for the others)."""
    if paths:
        return [load_run(p) for p in paths]
    runs = [load_run(p) for p in find_runs(root)]
    blocks = [r for r in runs if r.cv["splitter"] == "blocks"]
    if not blocks:
        raise SystemExit(f"no blocks-CV run under {root}: train one with notebooks/05_train")
    same = [r for r in runs if np.array_equal(r.folds, blocks[0].folds)]
    other = [r for r in runs if not np.array_equal(r.folds, blocks[0].folds)]
    if other:
        try:
            check_folds([blocks[0], other[0]])
        except ValueError as err:
            print(f"refused, as it should be:\n  {err}\n")
    return same


def blend_all(y, runs: list[Run], genes: list[str], groups: dict | None) -> None:
    """Every blend mode with nested CV, the comparison rows and post-processing; timings."""
    oof, test = ensemble.stack_predictions(runs)
    folds, splitter = runs[0].folds, runs[0].cv["splitter"]
    names = ensemble.run_labels(runs)
    cvs = ensemble.comparison_cvs(y, oof, folds, names, splitter)
    modes = ["mean", "global", *(["group"] if groups else []), "gene"]
    best = None
    for mode in modes:
        start = time.perf_counter()
        unit, units = ensemble.weight_sets(mode, genes, groups)
        result = ensemble.cv_blend(y, oof, test, folds, mode, unit, units, SHRINKS, splitter)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        post = ensemble.cv_postprocess(y, result.oof, result.test_pred, folds,
                                          ensemble.STEPS, result.cv, splitter)
        post_s = time.perf_counter() - start
        cvs[f"blend {mode} (nested)"] = result.cv
        cvs[f"blend {mode} + post (nested)"] = post.cv
        print(f"{mode:>6}: blend {fit_s:.2f} s, post-processing {post_s:.2f} s; shrink "
              f"{result.shrink} (folds {result.fold_shrinks}); mean weights "
              f"{np.round(result.weights.mean(axis=1), 3).tolist()}; post {post.curve} → "
              f"applied {post.steps or 'nothing'} (nested gain {post.gain:+.5f})")
        if best is None or result.cv["overall"]["score"] > best[1]["overall"]["score"]:
            best = (mode, result.cv)
    print()
    print(ensemble.cv_table(cvs).round(4).to_string())
    print(f"\nbest blend by nested CV: {best[0]}\n{format_cv(best[1])}")


def dacon_scale(n_spots: int = 6992, n_genes: int = 3467, n_runs: int = 3) -> None:
    """Time the nested blend and post-processing on synthetic runs of DACON size."""
    rng = np.random.default_rng(0)
    y = rng.gamma(0.5, 1.0, (n_spots, n_genes)).astype(np.float32)
    oof = np.stack([y + rng.normal(0, s, y.shape).astype(np.float32)
                    for s in np.linspace(0.5, 2.0, n_runs)])
    folds = np.arange(n_spots) * 4 // n_spots
    genes = [f"g{i}" for i in range(n_genes)]
    for mode in ("global", "gene"):
        start, cpu = time.perf_counter(), time.process_time()
        unit, units = ensemble.weight_sets(mode, genes)
        result = ensemble.cv_blend(y, oof, oof[:, :2277], folds, mode, unit, units, SHRINKS)
        print(f"DACON scale {n_spots}x{n_genes}, {n_runs} runs, {mode}: nested blend "
              f"{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU "
              f"(score {result.cv['overall']['score']:.4f})")
    start, cpu = time.perf_counter(), time.process_time()
    ensemble.cv_postprocess(y, result.oof, result.test_pred, folds, ensemble.STEPS,
                               result.cv)
    print(f"post-processing (nested, 4 candidates): {time.perf_counter() - start:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU; peak RSS {peak_rss_gb()} GB")


def main() -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", help="run folders (default: found under --root)")
    parser.add_argument("--root", default="runs/her2st", help="where to find runs")
    parser.add_argument("--data", default=str(HER2ST), help="her2st in the DACON layout")
    parser.add_argument("--gene-groups", help="gene_groups.csv for the per-group blend")
    parser.add_argument("--groups", default="kmeans", help="strategy in --gene-groups")
    parser.add_argument("--dacon-scale", action="store_true", help="time at DACON size only")
    args = parser.parse_args()
    if args.dacon_scale:
        return dacon_scale()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data} not found: this benchmark needs ../shared/her2st")
    from utils.data import load_data
    from utils.genes import load_gene_groups

    data = load_data(args.data)
    runs = pick_runs(args.runs, args.root)
    check_shapes(runs, len(data.train), len(data.test), len(data.genes))
    check_folds(runs)
    groups = (load_gene_groups(args.gene_groups, data.genes, args.groups)
              if args.gene_groups else None)
    print(f"{len(runs)} runs: {[r.name for r in runs]}")
    start = time.perf_counter()
    blend_all(data.y, runs, data.genes, groups)
    print(f"\ntotal {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_gb()} GB")


if __name__ == "__main__":
    main()
