"""utils.metric against a direct scipy.stats.pearsonr loop on tiny synthetic arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr

from utils.metric import KEYS, PARTS, max_gene_floor, pearson_genes, score, top_genes

SHAPES = [((7, 5), 3), ((30, 60), 50), ((13, 120), 50)]  # (spots, genes), n_top < genes
SEEDS = [0, 1]
KINDS = ["random", "const_true_col", "const_pred_col", "const_row", "offset_col", "zero_col",
         "mixed"]


def _r(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's Pearson r; undefined (constant input, NaN from scipy) counts as 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.nan_to_num(pearsonr(x, y).statistic, nan=0.0))


def ref_genes(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([_r(t[:, j], p[:, j]) for j in range(t.shape[1])])


def ref_spots(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([_r(t[i], p[i]) for i in range(t.shape[0])])


def ref_score(t: np.ndarray, p: np.ndarray, n_top: int) -> dict[str, float]:
    """The four-part score written out directly: argsort on true sums and variances."""
    genes, spots = ref_genes(t, p), ref_spots(t, p)
    heg = np.argsort(-t.sum(axis=0), kind="stable")[:n_top]
    hvg = np.argsort(-t.var(axis=0), kind="stable")[:n_top]
    parts = {"cells": spots.mean(), "max_gene": genes.max(), "heg50": genes[heg].mean(),
             "hvg50": genes[hvg].mean()}
    return {"score": np.mean(list(parts.values())), **parts, "mean_gene": genes.mean()}


def make_case(kind: str, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y_true, y_pred with one kind of degenerate slice (see KINDS)."""
    rng = np.random.default_rng(seed)
    t = rng.gamma(2.0, 1.0, size=shape)
    p = 0.5 * t + rng.normal(size=shape)
    if kind in ("const_true_col", "mixed"):
        t[:, 1] = 3.7
    if kind in ("const_pred_col", "mixed"):
        p[:, 2] = 0.1
    if kind == "const_row":
        t[3] = 2.5
    if kind in ("offset_col", "mixed"):
        t[:, 0] = 1e6 + 1e-3 * rng.normal(size=shape[0])
        p[:, 0] = 1e6 + 1e-3 * (t[:, 0] - 1e6) + 1e-3 * rng.normal(size=shape[0])
    if kind in ("zero_col", "mixed"):
        t[:, -1] = 0.0
    return t, p


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
def test_pearson_genes_matches_scipy(kind, seed, shape):
    t, p = make_case(kind, shape, seed)
    np.testing.assert_allclose(pearson_genes(t, p), ref_genes(t, p), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
def test_cells_part_is_the_mean_per_spot_r_of_scipy(kind, seed, shape):
    t, p = make_case(kind, shape, seed)
    assert score(t, p)["cells"] == pytest.approx(ref_spots(t, p).mean(), abs=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,n_top", SHAPES)
def test_score_matches_direct(kind, seed, shape, n_top):
    t, p = make_case(kind, shape, seed)
    got, want = score(t, p, n_top=n_top), ref_score(t, p, n_top)
    assert set(got) == set(KEYS)
    wrong = {k: (got[k], want[k]) for k in KEYS if abs(got[k] - want[k]) > 1e-7}
    assert not wrong, f"parts differing from the direct computation (got, want): {wrong}"


def test_degenerate_slices_count_as_zero():
    t, p = make_case("mixed", (9, 6), 0)
    genes = pearson_genes(t, p)
    assert genes[1] == 0.0  # constant true column
    assert genes[2] == 0.0  # constant predicted column
    assert genes[-1] == 0.0  # all-zero true column
    assert np.isfinite(genes).all() and (genes[[0, 3, 4]] != 0).all()
    t, p = make_case("const_row", (9, 6), 0)
    spots = ref_spots(t, p)
    assert spots[3] == 0.0  # constant true row: r = 0, the other rows count as usual
    assert score(t, p)["cells"] == pytest.approx(spots.mean(), abs=1e-12)
    assert score(p, t)["cells"] == pytest.approx(ref_spots(p, t).mean(), abs=1e-12)


def test_offset_column_is_not_lost_to_rounding():
    """1e6 + tiny noise: raw moments would cancel; the r must still match scipy."""
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(50, 1))
    t = 1e6 + 1e-4 * noise
    p = 1e6 + 1e-4 * (noise + 0.5 * rng.normal(size=(50, 1)))
    got = pearson_genes(t, p)[0]
    assert 0.5 < got < 1.0
    assert got == pytest.approx(_r(t[:, 0], p[:, 0]), abs=1e-6)


def test_hvg50_ranks_on_true_variance_even_if_prediction_is_constant():
    """The gene set of hvg50 depends on y_true only; a constant predicted column is r = 0 there.

    Here gene 2 has by far the highest true variance and its prediction is constant: it must be
    one of the top-2 variable genes (contributing 0), not be dropped from the ranking.
    """
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 5))
    t[:, 2] *= 10
    p = t + rng.normal(size=(20, 5))
    p[:, 2] = 3.0
    hvg = np.argsort(-t.var(axis=0), kind="stable")[:2]
    assert 2 in hvg
    expected = pearson_genes(t, p)[hvg].mean()
    assert score(t, p, n_top=2)["hvg50"] == pytest.approx(expected, abs=1e-12)


def test_score_is_mean_of_four_parts():
    t, p = make_case("random", (15, 8), 4)
    s = score(t, p, n_top=4)
    assert s["score"] == pytest.approx(np.mean([s[k] for k in PARTS]), abs=1e-15)
    assert s["mean_gene"] == pytest.approx(pearson_genes(t, p).mean(), abs=1e-15)
    assert s["cells"] == pytest.approx(ref_spots(t, p).mean(), abs=1e-12)


def test_perfect_prediction_scores_one():
    t, _ = make_case("random", (10, 6), 0)
    s = score(t, 2 * t + 1, n_top=3)
    for key in KEYS:
        assert s[key] == pytest.approx(1.0, abs=1e-12), key


def test_top_genes_matches_argsort():
    t, _ = make_case("random", (12, 30), 2)
    top = top_genes(t, n=7)
    np.testing.assert_array_equal(top["heg50"], np.argsort(-t.sum(axis=0))[:7])
    np.testing.assert_array_equal(top["hvg50"], np.argsort(-t.var(axis=0))[:7])
    assert len(top_genes(t, n=50)["heg50"]) == 30  # n capped at the number of genes


def test_n_top_at_least_genes_uses_all_genes():
    t, p = make_case("random", (10, 4), 1)
    s = score(t, p, n_top=50)
    assert s["heg50"] == pytest.approx(s["mean_gene"], abs=1e-12)
    assert s["hvg50"] == pytest.approx(s["mean_gene"], abs=1e-12)


def test_max_gene_floor_below_real_signal_and_deterministic():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(200, 20))
    p = t + 0.3 * rng.normal(size=t.shape)
    floor = max_gene_floor(t, p, n_shuffles=5, seed=7)
    assert floor < score(t, p)["max_gene"] - 0.3
    assert floor == max_gene_floor(t, p, n_shuffles=5, seed=7)
    assert floor != max_gene_floor(t, p, n_shuffles=5, seed=8)


@pytest.mark.parametrize("a_shape,b_shape", [((5, 3), (5, 4)), ((5, 3), (4, 3)), ((6,), (6,)),
                                             ((2, 3, 4), (2, 3, 4))])
def test_shape_mismatch_raises(a_shape, b_shape):
    a, b = np.ones(a_shape), np.ones(b_shape)
    for fn in (score, pearson_genes, max_gene_floor):
        with pytest.raises(ValueError, match="shape"):
            fn(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["true", "pred"])
def test_non_finite_raises(bad, which):
    t, p = make_case("random", (6, 4), 0)
    (t if which == "true" else p)[2, 1] = bad
    for fn in (score, pearson_genes):
        with pytest.raises(ValueError, match="finite"):
            fn(t, p)


def test_float32_input_works():
    t, p = make_case("random", (20, 10), 5)
    t32, p32 = t.astype(np.float32), p.astype(np.float32)
    got = score(t32, p32, n_top=5)
    want = ref_score(t32.astype(np.float64), p32.astype(np.float64), 5)
    for key in KEYS:
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(want[key], abs=1e-7), key
    assert pearson_genes(t32, p32).dtype == np.float64
