"""Three frozen-feature ideas, each a parameter of 05: one ridge strength per target PC
(ALPHA_PER_COMPONENT), retrieval corrected by a ridge on its out-of-slice residuals
(RECIPE="retrieval_ridge") and sub-spot tiles beside the whole patch (FEATURE_TILES)."""

import numpy as np
import pytest
import torch
from conftest import assert_label_invariant, blind_cv_score

from utils.config import FeatureSpec, TrainConfig
from utils.features import extract_features, pool_tiles, split_tiles
from utils.models import Preprocess, create_backbone, data_config, embed
from utils.train import (
    cv_retrieval,
    cv_retrieval_ridge,
    cv_ridge,
    cv_ridge_per_component,
    fit_ridge_path,
    fit_ridge_paths,
    nearest_predictions,
    out_of_group_retrieval,
    retrieval_ridge_predictions,
)

# --- ALPHA_PER_COMPONENT --------------------------------------------------------------------


def two_component_data(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets of two latent components: the first (largest variance) pure noise, the second a
    linear function of the features; every gene mixes both."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    noise, signal = 3.0 * rng.normal(size=n), x @ rng.normal(size=10) * 0.3
    loadings = rng.normal(size=(2, 30))
    loadings[1] -= loadings[1] @ loadings[0] / (loadings[0] @ loadings[0]) * loadings[0]
    y = np.outer(noise, loadings[0]) + np.outer(signal, loadings[1]) + 5.0
    return x, y + 0.05 * rng.normal(size=y.shape)


def test_one_alpha_for_every_component_is_the_ridge_on_target_pcs():
    x, y = two_component_data()
    path = fit_ridge_path(x, y, target_dim=3)
    np.testing.assert_allclose(path.predict_per_component(x[:7], [10.0] * 3),
                               path.predict(x[:7], 10.0), rtol=1e-5, atol=1e-5)
    grid = np.array([[1.0, 10.0, 100.0], [5.0, 5.0, 5.0]])
    stacked = path.predict_components(x[:7], grid)
    np.testing.assert_allclose(stacked[0], path.predict_components(x[:7], grid[0]), rtol=1e-12)
    mean, scale = y.mean(0), y.std(0)
    np.testing.assert_allclose(path.component_scores(y), ((y - mean) / scale) @
                               path.target_axes.T, rtol=1e-10)


def test_per_component_alpha_shrinks_the_noise_pc_and_keeps_the_signal_pc():
    x, y = two_component_data()
    folds = np.repeat(np.arange(3), 50)
    alphas = (0.1, 10.0, 1e6)
    result = cv_ridge_per_component(x, y, x[:4], folds, alphas, None, "blocks", 2)
    assert result.alpha == [1e6, 0.1]  # PC 1: noise, fully shrunk; PC 2: the signal, kept
    assert all(fold == [1e6, 0.1] for fold in result.fold_alphas)
    assert np.asarray(result.alpha_curve["component_mse"]).shape == (3, 2)
    # each fold's OOF rows: the model of the other folds with that fold's nested alphas
    fit = fit_ridge_path(x[folds != 1], y[folds != 1], target_dim=2)
    np.testing.assert_allclose(result.oof[folds == 1], fit.predict_per_component(
        x[folds == 1], result.fold_alphas[1]), rtol=1e-5, atol=1e-5)
    one = cv_ridge(x, y, x[:4], folds, alphas, None, "blocks", 2)
    assert result.cv["overall"]["score"] > one.cv["overall"]["score"]
    assert result.cv["overall"]["score"] > blind_cv_score(y, folds) + 0.3


def test_per_component_alpha_learns_nothing_from_shuffled_images():
    x, y = two_component_data()
    folds = np.repeat(np.arange(3), 50)
    blind = np.random.default_rng(1).permutation(x)
    result = cv_ridge_per_component(blind, y, x[:4], folds, (0.1, 10.0, 1e6), None, "blocks", 2)
    assert result.cv["overall"]["score"] < blind_cv_score(y, folds) + 0.1


@pytest.mark.parametrize("n_folds", [2, 3])
def test_per_component_oof_of_a_fold_ignores_its_labels(n_folds):
    x, y = two_component_data(n=120)
    folds = np.repeat(np.arange(n_folds), 120 // n_folds)
    assert_label_invariant(lambda t: cv_ridge_per_component(
        x, t, x[:3], folds, (0.1, 10.0, 1e3, 1e6), None, "blocks", 3).oof, y, folds)


def test_alpha_per_component_needs_target_pca_and_is_refused_by_finetune():
    with pytest.raises(ValueError, match="ALPHA_PER_COMPONENT.*TARGET_PCA"):
        TrainConfig(alpha_per_component=True, target_pca=None)
    assert TrainConfig(alpha_per_component=True, target_pca=8).alpha_per_component
    for recipe in ("finetune", "retrieval", "retrieval_ridge"):
        with pytest.raises(ValueError, match="ALPHA_PER_COMPONENT.*RECIPE='ridge'"):
            TrainConfig(recipe=recipe, alpha_per_component=True, target_pca=8)
    with pytest.raises(ValueError, match="FEATURE_TILES"):
        TrainConfig(recipe="finetune", feature_tiles=2)


# --- RECIPE = "retrieval_ridge" -------------------------------------------------------------


def linear_data(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets linear in the features with a per-slice offset of the features (a stain shift)
    that retrieval across slices stumbles on."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) + np.repeat(rng.normal(size=(3, 8)) * 2.0, n // 3, axis=0)
    y = np.exp(0.3 * (x - x.mean(0)) @ rng.normal(size=(8, 20)))
    return x, y + 0.05 * rng.normal(size=y.shape)


def test_out_of_group_estimates_never_read_their_own_group():
    x, y = linear_data(n=60)
    groups = np.repeat(np.arange(3), 20)
    estimates = out_of_group_retrieval(x, y, groups, (3, 5), (0.1,))
    changed = y.copy()
    changed[groups == 1] = 1e3
    again = out_of_group_retrieval(x, changed, groups, (3, 5), (0.1,))
    for a, b in zip(estimates, again):
        np.testing.assert_array_equal(a[groups == 1], b[groups == 1])
        assert not np.allclose(a[groups == 0], b[groups == 0])
    rows = groups == 2
    expected = nearest_predictions(x[~rows], y[~rows], x[rows], (5,), (0.1,))[0]
    np.testing.assert_allclose(estimates[1][rows], expected, rtol=1e-6)


def test_paths_through_one_svd_equal_one_fit_per_target():
    x, y = linear_data(n=60)
    ys = [y, np.log1p(y), y[:, ::-1].copy()]
    for target_dim in (None, 3):
        paths = fit_ridge_paths(x, ys, None, target_dim)
        z = paths[0].project(x[:5])
        for path, t in zip(paths, ys):
            np.testing.assert_allclose(path.predict_projected(z, 7.0),
                                       fit_ridge_path(x, t, None, target_dim).predict(x[:5], 7.0),
                                       rtol=1e-5, atol=1e-6)


def test_a_huge_alpha_leaves_retrieval_plus_its_mean_residual():
    x, y = linear_data(n=60)
    groups = np.repeat(np.arange(3), 20)
    pred, = retrieval_ridge_predictions(x, y, groups, x[:5], (5,), (0.1,), (1e14,))
    estimate = out_of_group_retrieval(x, y, groups, (5,), (0.1,))[0]
    base = nearest_predictions(x, y, x[:5], (5,), (0.1,))[0]
    np.testing.assert_allclose(pred, base + (y - estimate).mean(0), rtol=1e-5, atol=1e-6)


def test_retrieval_ridge_beats_retrieval_and_an_image_blind_model():
    x, y = linear_data()
    folds = np.repeat(np.arange(3), 50)
    ks, ts, alphas = (5, 20), (0.1,), (1.0, 100.0, 1e5)
    both = cv_retrieval_ridge(x, y, x[:4], folds, ks, ts, alphas, splitter="slices")
    alone = cv_retrieval(x, y, x[:4], folds, ks, ts, "slices")
    assert both.cv["overall"]["score"] > alone.cv["overall"]["score"] + 0.05
    assert both.cv["overall"]["score"] > blind_cv_score(y, folds) + 0.3
    assert both.test_pred.shape == (4, 20) and both.details["alpha"] in alphas
    assert {f["selection"] for f in both.cv["folds"]} == {"nested"}
    blind = cv_retrieval_ridge(np.random.default_rng(2).permutation(x), y, x[:4], folds, ks, ts,
                               alphas, splitter="slices")
    assert blind.cv["overall"]["score"] < blind_cv_score(y, folds) + 0.1


@pytest.mark.parametrize("n_folds", [2, 3])
def test_retrieval_ridge_oof_of_a_fold_ignores_its_labels(n_folds):
    x, y = linear_data(n=90)
    folds = np.repeat(np.arange(n_folds), 90 // n_folds)
    assert_label_invariant(lambda t: cv_retrieval_ridge(
        x, t, x[:3], folds, (3, 10), (0.1,), (1.0, 1e3), None, "blocks", 4).oof, y, folds)


# --- FEATURE_TILES --------------------------------------------------------------------------


def test_tiles_are_the_grid_of_each_image_and_pool_to_mean_then_max():
    x = torch.arange(2 * 1 * 5 * 4, dtype=torch.float32).reshape(2, 1, 5, 4)
    tiles = split_tiles(x, 2)
    assert tiles.shape == (8, 1, 2, 2)  # the fifth row is left out
    torch.testing.assert_close(tiles[0], x[0, :, :2, :2])
    torch.testing.assert_close(tiles[1], x[0, :, :2, 2:])
    torch.testing.assert_close(tiles[2], x[0, :, 2:4, :2])
    torch.testing.assert_close(tiles[7], x[1, :, 2:4, 2:])
    features = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [7.0, 1.0]])
    torch.testing.assert_close(pool_tiles(features, 2),
                               torch.tensor([[2.0, 2.0, 3.0, 4.0], [6.0, 3.0, 7.0, 5.0]]))


def test_tile_features_are_each_tile_encoded_beside_the_whole_patch():
    model = create_backbone("test_efficientnet", pretrained=False).eval()
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    spec = FeatureSpec("test_efficientnet", False, 64, tta=False, stages=(-1,))
    whole = extract_features(model, x, spec, progress=False)
    tiled = extract_features(model, x, FeatureSpec("test_efficientnet", False, 64, tta=False,
                                                   stages=(-1,), tiles=2), progress=False)
    d = whole.shape[1]
    assert tiled.shape == (3, 3 * d)
    np.testing.assert_allclose(tiled[:, :d], whole, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        batch = Preprocess(data_config(model, 64))(torch.from_numpy(x).permute(0, 3, 1, 2))
        quads = [embed(model, batch[:, :, r:r + 32, c:c + 32], [len(model.feature_info) - 1])
                 for r in (0, 32) for c in (0, 32)]
    quads = torch.stack(quads, dim=1).numpy()
    np.testing.assert_allclose(tiled[:, d:2 * d], quads.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tiled[:, 2 * d:], quads.max(1), rtol=1e-4, atol=1e-5)


def test_tiles_name_the_cache_and_reuse_the_whole_patch_file(dacon_dir, tmp_path):
    from utils.data import load_data
    from utils.features import cached_features

    base = FeatureSpec("test_efficientnet", False, 32, tta=False)
    tiled = FeatureSpec("test_efficientnet", False, 32, tta=False, tiles=2)
    assert tiled.tag == base.tag.replace("_32px_", "_32px_tiles2_")
    assert tiled.cache_key("i")["tiles"] == 2 and "tiles" not in base.cache_key("i")
    data = load_data(dacon_dir)
    whole = cached_features(data, base, cache_dir=tmp_path)
    both = cached_features(data, tiled, cache_dir=tmp_path)
    d = whole["train"].shape[1]
    np.testing.assert_array_equal(both["train"][:, :d], whole["train"])
    assert both["train"].shape[1] == 3 * d
    assert np.load(tmp_path / "features" / tiled.cache_name("train")).shape[1] == 2 * d
    with pytest.raises(ValueError, match="FEATURE_TILES"):
        TrainConfig(feature_tiles=0)
