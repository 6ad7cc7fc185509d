"""What else moves the unseen-section score (issue 26): label-free feature transforms and an RBF
kernel-ridge member beside the per-backbone ridge runs, on ../shared/her2st held-out sections.

    .venv/bin/python -m benchmarks.her2st_kernel [--gammas 1 2 4 8] [--kernel-alphas ...]
        [--transforms centre "centre z" "sqrt centre"]

Reads the extraction passes of `benchmarks.her2st_backbones` (run its `--only-extract` first):
lite0/1/2 at their native size, FEATURE_STAGES "all", crops whole + half, D4 TTA. Each her2st
section is held out in turn; on the other three (slice CV, one fold per section) every choice is
made without the held-out labels:
- ridge per backbone on transformed features, TARGET_PCA 8/16/32 by slice CV, alpha nested;
  transforms (label-free, from the images): "centre" (each slice minus its mean,
  CENTRE_FEATURES), "centre z" (each slice also divided by its std), "sqrt centre" (square
  root of the non-negative pooled activations, then centred);
- kernel ridge per backbone on centred features: RBF exp(-d² / (gamma · median d²)) on the
  standardised features, targets on their top 16 PCs, (gamma, alpha) by nested slice CV;
- 07's nested global blend of the three ridge runs, and of them plus the three kernel runs.
Prints every part of the held-out sections' mean and the choosing slice CV;
`runs/her2st/kernel/rows.csv` has every split's row.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from benchmarks import her2st_backbones as hb
from utils.cv import nested_choice_on_rows, score_folds
from utils.data import load_data
from utils.metric import score

OUT = hb.OUT.parent / "kernel"
TARGETS = ("pca:8", "pca:16", "pca:32")
PARTS = ["held score", "held cells", "held max_gene", "held heg50", "held hvg50", "cv score"]


def transform(fit: np.ndarray, held: np.ndarray, folds: np.ndarray,
              how: str) -> tuple[np.ndarray, np.ndarray]:
    """Label-free per-slice transforms of the fit rows (per fold) and the held-out section."""
    if how.startswith("sqrt"):
        fit, held = np.sqrt(np.maximum(fit, 0)), np.sqrt(np.maximum(held, 0))
    k = folds.max() + 1
    fit = fit - np.stack([fit[folds == i].mean(0) for i in range(k)])[folds]
    held = held - held.mean(0)
    if how.endswith(" z"):
        fit = fit / np.stack([fit[folds == i].std(0) + 1e-6 for i in range(k)])[folds]
        held = held / (held.std(0) + 1e-6)
    return fit, held


def kernel_path(x: np.ndarray, y: np.ndarray, gammas: tuple[float, ...], target_dim: int = 16):
    """Kernel ridge fitted on (x, y) for every gamma at once (one eigendecomposition each):
    a function (x_query, gamma, alpha) → predictions."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    sq = (z ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0)
    median = np.median(d2[np.triu_indices(len(z), 1)])
    y_mean = y.mean(0)
    y_scale = y.std(0) + 1e-12
    axes = np.linalg.svd((y - y_mean) / y_scale, full_matrices=False)[2][:target_dim]
    target = (((y - y_mean) / y_scale) @ axes.T @ axes) * y_scale
    eig = {}
    for gamma in gammas:
        lam, q = np.linalg.eigh(np.exp(-d2 / (gamma * median)))
        eig[gamma] = (lam, q, q.T @ target)

    def predict(xq: np.ndarray, gamma: float, alpha: float) -> np.ndarray:
        zq = (xq - mean) / scale
        d2q = np.maximum((zq ** 2).sum(1)[:, None] + sq[None] - 2 * zq @ z.T, 0)
        lam, q, qty = eig[gamma]
        coef = q @ (qty / (lam + alpha * len(z) / 100)[:, None])
        return (np.exp(-d2q / (gamma * median)) @ coef + y_mean).astype(np.float32)

    return predict


def fit_kernel(x: np.ndarray, y: np.ndarray, x_pred: np.ndarray, folds: np.ndarray,
               splitter: str, gammas: tuple[float, ...], alphas: tuple[float, ...]) -> hb.Fit:
    """Kernel ridge with (gamma, alpha) chosen by nested CV, as 05 chooses ridge's alpha."""
    pairs = [(g, a) for g in gammas for a in alphas]
    paths: dict[bytes, object] = {}

    def fit_on(rows: np.ndarray):
        key = np.packbits(rows).tobytes()
        if key not in paths:
            paths[key] = kernel_path(x[rows], y[rows], gammas)
        return paths[key]

    def held_out_scores(fit_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        path = fit_on(fit_rows)
        return np.array([score(y[held_rows], path(x[held_rows], *p))["score"] for p in pairs])

    choices, curve = nested_choice_on_rows(folds, held_out_scores, len(pairs))
    oof = np.zeros(y.shape, np.float32)
    for k, choice in zip(np.unique(folds), choices):
        oof[folds == k] = fit_on(folds != k)(x[folds == k], *pairs[choice])
    best = pairs[int(np.argmax(curve))]
    pred = kernel_path(x, y, gammas)(x_pred, *best)
    return hb.Fit(oof, pred, score_folds(y, oof, folds, splitter), {"gamma, alpha": best})


def best_ridge(x: np.ndarray, x_pred: np.ndarray, y: np.ndarray, split: hb.Split) -> hb.Fit:
    """05's ridge with the TARGET_PCA of the best slice CV over the split's fit rows."""
    with hb.SharedSVD().active():
        fits = [hb.fit_ridge(x, x_pred, y, split.folds, split.splitter, t) for t in TARGETS]
    return max(fits, key=lambda f: f.cv["overall"]["score"])


def run_split(data, split: hb.Split, args) -> list[dict]:
    """Every member and blend on one held-out split."""
    y, rows, members = data.y[split.fit_rows], [], {}
    features = {b: hb.recipe_features(data, b, size, None, "all", (1.0, 0.5))
                for b, size in hb.BACKBONES.items()}
    for how in args.transforms:
        for b, x in features.items():
            fx, hx = transform(x["train"][split.fit_rows], x["train"][split.held_rows],
                               split.folds, how)
            members[f"{b} {how}"] = best_ridge(fx, hx, y, split)
        members[f"blend {how}"] = hb.blend_fits(
            y, split.folds, split.splitter, {b: members[f"{b} {how}"] for b in features})
    for b, x in features.items():
        fx, hx = transform(x["train"][split.fit_rows], x["train"][split.held_rows],
                           split.folds, "centre")
        members[f"{b} kernel"] = fit_kernel(fx, y, hx, split.folds, split.splitter,
                                            tuple(args.gammas), tuple(args.kernel_alphas))
    both = {m: members[m] for b in features for m in (f"{b} centre", f"{b} kernel")}
    members["blend centre + kernels"] = hb.blend_fits(y, split.folds, split.splitter, both)
    for name, fit in members.items():
        rows.append(hb.score_fit(fit, split, data.y, what=name,
                                 **{k: str(v) for k, v in fit.details.items()}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--kernel-alphas", type=float, nargs="+",
                        default=[0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--transforms", nargs="+", default=["centre", "centre z", "sqrt centre"])
    args = parser.parse_args()
    if not hb.HER2ST.is_dir():
        raise SystemExit(f"{hb.HER2ST} is absent: this benchmark needs ../shared/her2st")
    if "centre" not in args.transforms:
        raise SystemExit("--transforms must include centre (the kernel blend's ridge members)")
    os.environ.setdefault("KIT_CACHE_DIR", str(hb.OUT / "cache"))
    missing = {hb.pass_name(b, s, c, None) for b, s in hb.BACKBONES.items() for c in (1.0, 0.5)
               } - hb.finished_passes(hb.OUT / "passes.log")
    if missing:
        raise SystemExit(f"passes {sorted(missing)} are not cached: run "
                         "`python -m benchmarks.her2st_backbones --only-extract` first")
    OUT.mkdir(parents=True, exist_ok=True)
    data, rows = load_data(hb.HER2ST), []
    for split in hb.make_splits(data)[1:]:
        start = time.perf_counter()
        rows += run_split(data, split, args)
        print(f"{split.name}: {time.perf_counter() - start:.0f} s", flush=True)
        pd.DataFrame(rows).to_csv(OUT / "rows.csv", index=False)
    table = pd.DataFrame(rows).groupby("what", sort=False)[PARTS].mean()
    table["held min"] = pd.DataFrame(rows).groupby("what", sort=False)["held score"].min()
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
