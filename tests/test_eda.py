"""EDA statistics against direct computations; change points on planted shifts; image colour
features and the train–test shift classifier; 01_eda (smoke), its duplicate audit included."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from utils import eda, slices
from utils.config import EdaConfig
from utils.metric import top_genes


def test_gene_stats_match_direct_computations():
    from scipy.stats import skew

    rng = np.random.default_rng(0)
    y = rng.gamma(0.5, 1.0, (80, 60)).astype(np.float32) - 0.05
    y[:, 3] = 0.0
    stats = eda.gene_stats(y, [f"g{i}" for i in range(60)], near_zero=0.01, n_top=5)
    y64 = y.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], y64.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats["var"], y64.var(0), rtol=1e-10)
    np.testing.assert_allclose(stats["skew"].drop(3), np.delete(skew(y64, axis=0), 3), rtol=1e-8)
    np.testing.assert_allclose(stats["near_zero"], (np.abs(y) < 0.01).mean(0))
    np.testing.assert_allclose(stats["min"], y.min(0))
    assert stats.loc[3, "skew"] == 0 and stats.loc[3, "near_zero"] == 1.0
    assert np.isnan(stats.loc[3, "cv"])
    top = top_genes(y, 5)
    assert set(np.flatnonzero(stats["heg50"])) == set(top["heg50"])
    assert set(np.flatnonzero(stats["hvg50"])) == set(top["hvg50"])


def test_example_genes_span_low_to_high_mean():
    stats = pd.DataFrame({"mean": [5.0, 0.1, 3.0, 1.0, 0.5]})
    assert eda.example_genes(stats, 3).tolist() == [1, 3, 0]
    assert len(eda.example_genes(stats, 10)) == 5


def test_pair_correlations_take_each_pair_once_or_a_sample():
    corr = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert sorted(eda.pair_correlations(corr)) == [1, 2, 3, 6, 7, 11]
    assert len(eda.pair_correlations(np.ones((100, 100)), max_pairs=50)) == 50


def test_change_points_find_planted_shifts_and_nothing_in_noise():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 4))
    assert slices.find_change_points(x, window=20) == []
    x[150:] += [1.5, 0, -1.0, 0.5]
    x[420:] += [0, 2.0, 0, 0]
    points = slices.find_change_points(x, window=20)
    assert len(points) == 2 and abs(points[0] - 150) <= 10 and abs(points[1] - 420) <= 10
    assert slices.find_change_points(x, window=20, max_points=1) in ([points[0]], [points[1]])
    assert slices.find_change_points(x[:30], window=20) == []  # too short for two windows


def test_jump_scores_are_the_difference_of_window_means():
    x = np.r_[np.zeros(10), np.ones(10)][:, None] * 2.0
    scores = slices.jump_scores(x, window=5)
    assert np.isnan(scores[:5]).all() and np.isnan(scores[16:]).all()
    assert np.nanargmax(scores) == 10 and scores[10] == pytest.approx(4.0)  # unit-variance steps
    assert scores[5] == 0.0


def test_row_signals_hold_expression_and_colour_columns():
    rng = np.random.default_rng(2)
    y = rng.gamma(1.0, 1.0, (50, 20))
    colour = pd.DataFrame({f"mean_{c}": rng.random(50) for c in eda.CHANNELS})
    signals = slices.row_signals(y, colour[[f"mean_{c}" for c in eda.CHANNELS[:5]]])
    assert list(signals.columns) == ["total expression", "expression PC1", "expression PC2",
                                     "expression PC3", "mean R", "mean G", "mean B", "mean H",
                                     "mean E"]
    np.testing.assert_allclose(signals["total expression"], y.sum(1), rtol=1e-5)
    assert list(slices.row_signals(y).columns)[-1] == "expression PC3"


def test_image_features_match_rgb2hed_on_sampled_pixels():
    from skimage.color import rgb2hed

    rng = np.random.default_rng(3)
    images = rng.integers(0, 200, (5, 16, 16, 3), dtype=np.uint8)
    images[4] = 255
    feats = eda.image_features(images, stride=2, chunk=2)
    sub = images[:, ::2, ::2]
    hed = rgb2hed(sub[1]).reshape(-1, 3)
    assert feats.loc[1, "mean_H"] == pytest.approx(hed[:, 0].mean(), rel=1e-5)
    assert feats.loc[1, "std_E"] == pytest.approx(hed[:, 1].std(), rel=1e-4)
    assert feats.loc[2, "mean_G"] == pytest.approx(sub[2, ..., 1].mean() / 255, rel=1e-6)
    assert feats.loc[4, "white"] == 1.0 and feats.loc[0, "white"] == 0.0
    assert len(feats) == 5 and feats.shape[1] == 2 * len(eda.CHANNELS) + 1


def test_pixel_sample_has_six_channels_in_range():
    images = np.random.default_rng(4).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    pixels = eda.pixel_sample(images, n_pixels=400, stride=2)
    assert list(pixels.columns) == list(eda.CHANNELS) and len(pixels) == 400
    assert pixels[["R", "G", "B"]].to_numpy().min() >= 0 and pixels["R"].max() <= 1


def test_feature_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    train = pd.DataFrame({"a": rng.normal(0, 1, 40), "b": rng.integers(0, 3, 40)})
    test = pd.DataFrame({"a": rng.normal(1, 1, 25), "b": rng.integers(0, 3, 25)})
    auc = eda.feature_auc(train, test)
    label = np.r_[np.zeros(40), np.ones(25)]
    for column in ("a", "b"):
        expected = roc_auc_score(label, np.r_[train[column], test[column]])
        assert auc[column] == pytest.approx(expected, abs=1e-12)


def test_shift_auc_sees_a_colour_shift_and_not_its_absence():
    rng = np.random.default_rng(6)
    train = pd.DataFrame(rng.normal(0, 1, (200, 3)), columns=list("xyz"))
    same = pd.DataFrame(rng.normal(0, 1, (100, 3)), columns=list("xyz"))
    shifted = same.assign(y=same["y"] + 3)
    assert eda.shift_auc(train, shifted)["auc"] > 0.95
    result = eda.shift_auc(train, same)
    assert result["auc"] < 0.65 and result["n_folds"] == 5
    assert set(result["features"]) == {"x", "y", "z"}


def test_eda_config_checks_values_and_shrinks_for_smoke():
    cfg = EdaConfig(smoke=True)
    assert cfg.n_heatmap_genes == 30 and cfg.image_stride == 8
    assert cfg.window_for(6992) == 139 and cfg.window_for(100) == 10
    assert EdaConfig(window=7).window_for(6992) == 7
    with pytest.raises(ValueError, match="N_PATCHES must be a positive integer"):
        EdaConfig(n_patches=0)


@pytest.mark.smoke
def test_eda_notebook_wrote_stats_and_figures(demo_pipeline):
    from utils.data import load_data

    run = demo_pipeline["runs"] / "eda"
    data = load_data(demo_pipeline["data"])
    stats = pd.read_csv(run / "gene_stats.csv")
    assert stats["gene"].tolist() == data.genes
    np.testing.assert_allclose(stats["mean"], data.y.mean(0), rtol=1e-5)
    assert stats["heg50"].sum() == 50 and stats["hvg50"].sum() == 50
    for figure in ("gene_scales", "example_genes", "mean_variance", "pair_correlations",
                   "correlation_clustermap", "row_structure", "channels", "patches", "shift"):
        assert (run / f"{figure}.png").stat().st_size > 10_000, figure
    shift = json.loads((run / "shift.json").read_text())
    assert 0.5 < shift["auc"] <= 1.0  # the demo's test slice is stained differently
    points = json.loads((run / "change_points.json").read_text())
    assert all(0 < p < len(data.train) for p in points["change_points"])
    images = pd.read_csv(run / "image_stats.csv")
    assert (images["split"] == "test").sum() == len(data.test)
    assert json.loads((run / "config.json").read_text())["image_stride"] == 8  # QUICK
    pairs = pd.read_csv(run / "duplicates.csv")  # the demo patches are all distinct
    assert pairs.empty and {"where", "kind", "id_a", "id_b", "bits"} <= set(pairs.columns)
    assert (run / "duplicates.png").is_file()
