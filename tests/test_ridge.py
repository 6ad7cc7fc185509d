"""Ridge path vs sklearn, nested alpha selection, predictions on the target scale."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from utils.cv import make_folds
from utils.train import cv_ridge, fit_ridge_path


def _data(n=120, d=15, g=8, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + rng.normal(size=d) * 3
    y = x @ rng.normal(size=(d, g)) * 0.1 + rng.normal(size=(n, g)) + offset
    return x, y


@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
def test_ridge_path_equals_sklearn_ridge_on_standardised_features(alpha):
    x, y = _data()
    scaler = StandardScaler().fit(x)
    ref = Ridge(alpha=alpha).fit(scaler.transform(x), y).predict(scaler.transform(x[:10]))
    np.testing.assert_allclose(fit_ridge_path(x, y).predict(x[:10], alpha), ref, rtol=1e-5,
                               atol=1e-5)


def test_pca_dim_equals_ridge_on_principal_components():
    x, y = _data()
    xs = StandardScaler().fit_transform(x)
    pca = PCA(n_components=5, svd_solver="full").fit(xs)
    ref = Ridge(alpha=3.0).fit(pca.transform(xs), y).predict(pca.transform(xs[:10]))
    np.testing.assert_allclose(fit_ridge_path(x, y, pca_dim=5).predict(x[:10], 3.0), ref,
                               rtol=1e-5, atol=1e-5)


def test_huge_alpha_predicts_the_train_mean_on_original_scale():
    x, y = _data(offset=50.0)
    pred = fit_ridge_path(x, y).predict(x[:4], 1e12)
    np.testing.assert_allclose(pred, np.broadcast_to(y.mean(0), pred.shape), rtol=1e-4)


def test_constant_feature_is_harmless():
    x, y = _data()
    x[:, 3] = 7.0
    assert np.isfinite(fit_ridge_path(x, y).predict(x, 1.0)).all()


def test_cv_ridge_nested_choice_and_outputs():
    x, y = _data(n=160, g=60)
    folds = make_folds("blocks", len(x), 4)
    alphas = (1e-2, 1.0, 1e2, 1e6)
    result = cv_ridge(x, y, x[:9], folds, alphas)
    assert result.oof.shape == y.shape and result.test_pred.shape == (9, y.shape[1])
    assert result.alpha in alphas and all(a in alphas for a in result.fold_alphas)
    assert result.alpha != 1e6  # a signal is there: the largest alpha (mean only) never wins
    assert result.cv["splitter"] == "blocks" and len(result.cv["folds"]) == 4
    assert result.cv["overall"]["mean_gene"] > 0.3
    # each OOF block comes from a model that never saw it, with that fold's nested alpha
    k = 2
    fit = fit_ridge_path(x[folds != k], y[folds != k])
    np.testing.assert_allclose(result.oof[folds == k],
                               fit.predict(x[folds == k], result.fold_alphas[k]), rtol=1e-5)
    assert result.alpha_curve["alpha"] == list(alphas) and len(result.alpha_curve["score"]) == 4


def test_nearest_predictions_weigh_the_nearest_spots():
    from utils.train import nearest_predictions

    x_train = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    y_train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    query = x_train[[1]]
    nearest, = nearest_predictions(x_train, y_train, query, (1,), (0.05,))
    np.testing.assert_allclose(nearest, y_train[[1]])  # k = 1: the most similar spot: itself
    z = (x_train - x_train.mean(0)) / x_train.std(0)  # cosine of standardised features
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    two = np.argsort(-(z @ z[1]))[:2]
    flat, = nearest_predictions(x_train, y_train, query, (2,), (1e6,))
    np.testing.assert_allclose(flat, y_train[two].mean(axis=0, keepdims=True), rtol=1e-5)
    sharp, warm = nearest_predictions(x_train, y_train, query, (2,), (0.01, 10.0))
    assert abs(sharp[0, 1] - 1.0) < abs(warm[0, 1] - 1.0)  # a low temperature: the nearest wins


def test_retrieval_picks_k_without_the_scored_fold_and_learns():
    from conftest import blind_cv_score

    from utils.train import cv_retrieval

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = np.exp(x[:, :3] @ rng.normal(size=(3, 30)) * 0.3) + 0.1 * rng.normal(size=(120, 30))
    folds = np.repeat(np.arange(3), 40)
    result = cv_retrieval(x, y, x[:5], folds, (1, 5, 20), (0.05, 0.5), "blocks")
    assert all(f["selection"] == "nested" for f in result.cv["folds"])
    assert result.test_pred.shape == (5, 30) and np.isfinite(result.oof).all()
    assert result.cv["overall"]["score"] > blind_cv_score(y, folds) + 0.05


def test_ridge_on_target_pcs_is_the_projection_of_ridge_onto_them():
    from utils.train import fit_ridge_path

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.gamma(2.0, 1.0, size=(40, 12))
    full, reduced = fit_ridge_path(x, y), fit_ridge_path(x, y, target_dim=3)
    mean, scale = y.mean(0), y.std(0)
    axes = np.linalg.svd((y - mean) / scale, full_matrices=False)[2][:3]
    expected = (((full.predict(x, 10.0) - mean) / scale) @ axes.T @ axes) * scale + mean
    np.testing.assert_allclose(reduced.predict(x, 10.0), expected, rtol=1e-4, atol=1e-4)
    assert np.linalg.matrix_rank((reduced.predict(x, 10.0) - mean) / scale, tol=1e-3) == 3


@pytest.mark.parametrize("n_folds", [2, 3, 4])
@pytest.mark.parametrize("how", ["noise", "other"])
def test_ridge_oof_of_a_fold_ignores_its_labels(n_folds, how):
    from conftest import assert_label_invariant

    x, y = _data(n=120, g=20)
    folds = make_folds("blocks", len(x), n_folds)
    alphas = (1e-2, 1.0, 1e2, 1e4)
    assert_label_invariant(lambda t: cv_ridge(x, t, x[:3], folds, alphas).oof, y, folds,
                           how=how)


def test_ridge_with_two_folds_chooses_alpha_on_blocks_of_the_other_fold():
    """2 folds (two training slices, or SMOKE): alpha is chosen by CV over contiguous blocks of
    the one other fold, and cv.json says so."""
    from utils.cv import INNER_BLOCKS
    from utils.metric import score

    x, y = _data(n=90, g=20)
    folds = make_folds("blocks", len(x), 2)
    alphas = (1e-2, 1.0, 1e2, 1e4)
    result = cv_ridge(x, y, x[:3], folds, alphas)
    assert all(f["selection"].startswith("nested (2 folds") for f in result.cv["folds"])
    for k in (0, 1):  # the alpha the inner blocks of fold 1 - k prefer
        rows = np.flatnonzero(folds != k)
        blocks = make_folds("blocks", len(rows), INNER_BLOCKS)
        curve = np.mean([[score(y[rows[blocks == b]], fit_ridge_path(
            x[rows[blocks != b]], y[rows[blocks != b]]).predict(x[rows[blocks == b]], a))["score"]
            for a in alphas] for b in range(INNER_BLOCKS)], axis=0)
        assert result.fold_alphas[k] == alphas[int(np.argmax(curve))]


def test_a_planted_alpha_leak_is_caught():
    """The helper fails for ridge whose fold alpha is the best on that fold's own rows."""
    from conftest import assert_label_invariant

    from utils.metric import score

    x, y = _data(n=120, g=20)
    folds = make_folds("blocks", len(x), 3)
    alphas = (1e-2, 1e2, 1e4, 1e6)

    def leaky_oof(t):
        oof = np.zeros(t.shape)
        for k in range(3):
            fit, rows = fit_ridge_path(x[folds != k], t[folds != k]), folds == k
            preds = [fit.predict(x[rows], a) for a in alphas]
            oof[rows] = preds[int(np.argmax([score(t[rows], p)["score"] for p in preds]))]
        return oof

    with pytest.raises(AssertionError, match="its own labels"):
        assert_label_invariant(leaky_oof, y, folds)


@pytest.mark.parametrize("n_folds", [2, 3])
def test_retrieval_oof_of_a_fold_ignores_its_labels(n_folds):
    from conftest import assert_label_invariant

    from utils.train import cv_retrieval

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6))
    y = np.exp(x[:, :3] @ rng.normal(size=(3, 20)) * 0.3) + 0.1 * rng.normal(size=(90, 20))
    folds = make_folds("blocks", len(x), n_folds)
    result = cv_retrieval(x, y, x[:3], folds, (1, 5, 20), (0.05, 0.5), "blocks")
    expected = "nested" if n_folds > 2 else "nested (2 folds"
    assert all(f["selection"].startswith(expected) for f in result.cv["folds"])
    assert_label_invariant(lambda t: cv_retrieval(x, t, x[:3], folds, (1, 5, 20), (0.05, 0.5),
                                                  "blocks").oof, y, folds)


def test_centring_by_fold_removes_a_per_slice_offset_and_keeps_ridge_nested():
    """CENTRE_FEATURES: every fold's features (and the test set's) lose their own mean, so a
    staining offset shared by a slice's patches no longer moves the predictions; it reads no
    labels, so ridge on centred features still passes the label-invariance check."""
    from conftest import assert_label_invariant

    from utils.train import centre_by_fold

    x, y = _data(n=120)
    folds = make_folds("blocks", len(x), 3)
    shift = np.random.default_rng(1).normal(size=(3, x.shape[1])) * 20  # one offset per slice
    test = x[:30] + 7.0
    centred = centre_by_fold({"train": x + shift[folds], "test": test}, folds)
    for k in range(3):
        np.testing.assert_allclose(centred["train"][folds == k].mean(axis=0), 0, atol=1e-3)
        np.testing.assert_allclose(centred["train"][folds == k],
                                   x[folds == k] - x[folds == k].mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(centred["test"], x[:30] - x[:30].mean(axis=0), atol=1e-3)
    plain = cv_ridge(x + shift[folds], y, test, folds, (1.0, 100.0)).cv["overall"]["score"]
    fixed = cv_ridge(centred["train"], y, centred["test"], folds, (1.0, 100.0))
    assert fixed.cv["overall"]["score"] > plain  # the offsets were noise to the fit

    def oof(t):
        c = centre_by_fold({"train": x + shift[folds], "test": test}, folds)
        return cv_ridge(c["train"], t, c["test"], folds, (1.0, 100.0)).oof

    assert_label_invariant(oof, y, folds)


@pytest.mark.parametrize("shape", [(60, 25), (25, 60)])
def test_gram_svd_is_the_thin_svd(shape):
    """The Gram route gives LAPACK's singular values and the same factorisation, tall or wide,
    and its top-k alone are the first k."""
    from utils.train import gram_svd

    rng = np.random.default_rng(0)
    a = rng.normal(size=shape) @ np.diag(np.geomspace(1, 1e-3, shape[1]))
    u, s, vt = gram_svd(a)
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False), rtol=1e-8)
    np.testing.assert_allclose((u * s) @ vt, a, atol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(len(s)), atol=1e-8)
    top = gram_svd(a, 4)
    np.testing.assert_allclose(top[1], s[:4], rtol=1e-10)
    np.testing.assert_allclose(np.abs(top[2] @ vt[:4].T), np.eye(4), atol=1e-8)


def test_ridge_on_collinear_features_matches_the_lapack_svd_path():
    """Features as collinear as a backbone's stage maps (rank 12 of 80, plus 1e-7 noise): the
    ridge predictions of the Gram route equal those of a full LAPACK SVD at every alpha."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 12)) @ rng.normal(size=(12, 80)) + 1e-7 * rng.normal(size=(50, 80))
    y = x[:, :5] @ rng.normal(size=(5, 9)) + rng.normal(size=(50, 9))
    fit = fit_ridge_path(x, y)
    xs = (x - x.mean(0)) / x.std(0)
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    for alpha in (1e-3, 1.0, 100.0):
        expected = (xs @ vt.T * (s / (s ** 2 + alpha))) @ (u.T @ (y - y.mean(0))) + y.mean(0)
        np.testing.assert_allclose(fit.predict(x, alpha), expected, rtol=1e-4, atol=1e-4)
