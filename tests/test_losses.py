"""Each loss term against a direct numpy computation; small batches and constant columns."""

import numpy as np
import pytest
import torch

from utils.choices import LOSSES, check_loss
from utils.losses import (
    LOSS_TERMS,
    GeneLoss,
    covariance_term,
    create_loss,
    list_losses,
    mse_term,
    pearson_term,
    spot_pearson_term,
)


def _pair(n=7, genes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, genes)), rng.normal(size=(n, genes))


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def _np_pearson_loss(p, t):
    r = []
    for j in range(p.shape[1]):
        if np.ptp(p[:, j]) == 0 or np.ptp(t[:, j]) == 0:
            r.append(0.0)
        else:
            r.append(np.corrcoef(p[:, j], t[:, j])[0, 1])
    return 1 - np.mean(r)


def _np_spot_pearson_loss(p, t):
    """1 − mean over spots of r across genes, each row by np.corrcoef (constant rows: r = 0)."""
    return _np_pearson_loss(p.T, t.T)


def _np_cov_loss(p, t):
    return np.mean((np.cov(p, rowvar=False) - np.cov(t, rowvar=False)) ** 2)


def test_mse_matches_numpy():
    p, t = _pair()
    assert mse_term(_t(p), _t(t)).item() == pytest.approx(np.mean((p - t) ** 2))


def test_pearson_matches_numpy_with_a_constant_column():
    p, t = _pair()
    p[:, 1] = 3.0  # constant prediction: r counts as 0, as in the metric
    t[:, 3] = -1.0  # constant truth
    assert pearson_term(_t(p), _t(t)).item() == pytest.approx(_np_pearson_loss(p, t), abs=1e-6)


def test_perfect_pearson_is_zero_loss_and_scale_free():
    p, _ = _pair()
    assert pearson_term(_t(3 * p + 1), _t(p)).item() == pytest.approx(0.0, abs=1e-6)


def test_covariance_matches_numpy_gene_by_gene_matrices():
    p, t = _pair(n=9, genes=6)
    assert covariance_term(_t(p), _t(t)).item() == pytest.approx(_np_cov_loss(p, t), rel=1e-9)


@pytest.mark.parametrize("term", [mse_term, pearson_term, spot_pearson_term, covariance_term])
@pytest.mark.parametrize("n", [1, 2])
def test_tiny_batches_give_finite_values_and_gradients(term, n):
    p, t = _pair(n=n, genes=4)
    pred = _t(p).requires_grad_(True)
    value = term(pred, _t(t))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()


def test_constant_columns_give_finite_gradients():
    p, t = np.ones((5, 3)), np.ones((5, 3))
    pred = _t(p).requires_grad_(True)
    for term in (pearson_term, spot_pearson_term, covariance_term):
        term(pred, _t(t)).backward()
        assert torch.isfinite(pred.grad).all()


def test_weights_combine_the_three_terms():
    p, t = _pair()
    loss, parts = GeneLoss({"mse": 0.2, "pearson": 0.5, "covariance": 0.3})(_t(p), _t(t))
    expected = 0.2 * np.mean((p - t) ** 2) + 0.5 * _np_pearson_loss(p, t) + \
        0.3 * _np_cov_loss(p, t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"mse", "pearson", "covariance"}


def test_terms_without_weight_are_not_computed():
    p, t = _pair()
    loss, parts = create_loss({"mse": 1.0, "pearson": 0.0, "covariance": 0.0})(_t(p), _t(t))
    assert loss.item() == pytest.approx(np.mean((p - t) ** 2), rel=1e-6)
    assert np.isnan(parts["pearson"].item()) and np.isnan(parts["covariance"].item())


def test_groups_are_size_weighted_and_covariance_stays_within_groups():
    p, t = _pair(n=8, genes=5)
    groups = [np.array([0, 2, 4]), np.array([1, 3])]
    loss, _ = create_loss({"mse": 0.3, "pearson": 0.3, "covariance": 0.4}, groups)(_t(p), _t(t))
    expected = sum(len(g) / 5 * (0.3 * np.mean((p[:, g] - t[:, g]) ** 2)
                                 + 0.3 * _np_pearson_loss(p[:, g], t[:, g])
                                 + 0.4 * _np_cov_loss(p[:, g], t[:, g])) for g in groups)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_spot_pearson_matches_numpy_with_a_constant_row():
    p, t = _pair()
    p[2] = 0.5  # a constant spot: r = 0, as in the metric's cells part
    assert spot_pearson_term(_t(p), _t(t)).item() == pytest.approx(
        _np_spot_pearson_loss(p, t), abs=1e-6)
    assert spot_pearson_term(_t(2 * t + 3), _t(t)).item() == pytest.approx(0.0, abs=1e-6)


def test_spot_pearson_is_one_minus_the_metrics_cells_part():
    from utils.metric import score

    p, t = _pair(n=12, genes=60, seed=3)
    p = 0.6 * t + p  # predictions with skill, so cells is far from 0
    cells = score(t, p)["cells"]
    assert spot_pearson_term(_t(p), _t(t)).item() == pytest.approx(1 - cells, abs=1e-6)


def test_the_registry_holds_every_name_loss_accepts():
    assert list_losses() == list(LOSS_TERMS) and set(LOSS_TERMS) == set(LOSSES)


def test_any_mapping_of_terms_combines_by_name():
    p, t = _pair(n=9, genes=6)
    loss, parts = create_loss({"spot_pearson": 2.0, "mse": 0.5})(_t(p), _t(t))
    expected = 2.0 * _np_spot_pearson_loss(p, t) + 0.5 * np.mean((p - t) ** 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert list(parts) == ["spot_pearson", "mse"]


@pytest.mark.parametrize("loss", [{"huber": 1.0}, {"mse": -1.0}, {"mse": 0.0}, {}, 3, "rank"])
def test_bad_loss_is_named(loss):
    with pytest.raises(ValueError, match="LOSS"):
        check_loss(loss)
