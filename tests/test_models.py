"""Gene regressors: head bookkeeping, target scaling and PCA, ridge heads, freezing, saving."""

import numpy as np
import pytest
import torch

from utils.loop import amp_dtype, autocast, grad_scaler
from utils.models import (
    HUB_MODELS,
    ModelSpec,
    build_model,
    fit_pca,
    fit_scaler,
    freeze_blocks,
    load_weights,
    plan_heads,
    resolve_hub_model,
    save_weights,
    set_targets,
)
from utils.train import init_heads_ridge


def _spec(heads=None, dims=None, n_genes=5):
    heads = heads or {"a": [0, 2, 4], "b": [1, 3]}
    return ModelSpec("test_convnext", 32, list(range(n_genes)), heads, dims or {})


def _images(n=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, 3, 32, 32),
                                                                  dtype=np.uint8))


def test_heads_write_their_own_gene_columns():
    model = build_model(_spec()).eval()
    for value, head in zip((1.0, 2.0), model.heads):  # head a → 1, head b → 2
        torch.nn.init.zeros_(head.linear.weight)
        torch.nn.init.constant_(head.linear.bias, value)
    out = model(_images())
    assert out.shape == (6, 5)
    np.testing.assert_array_equal(out[0].detach().numpy(), [1, 2, 1, 2, 1])


def test_pca_heads_decode_to_genes_and_fit_on_training_rows():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 5)) + 3  # rank 2
    model = build_model(_spec(dims={"a": 2, "b": 1}))
    z = set_targets(model, y.astype(np.float32))
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    decoder = model.heads[0].decoder.numpy()
    assert decoder.shape == (2, 3)
    np.testing.assert_allclose(decoder @ decoder.T, np.eye(2), atol=1e-5)  # orthonormal axes
    assert model(_images()).shape == (6, 5)
    np.testing.assert_allclose(model.to_original(torch.zeros(1, 5)).numpy()[0], y.mean(0),
                               rtol=1e-5)


def test_ridge_heads_reproduce_the_ridge_solution():
    from utils.train import fit_ridge_path

    rng = np.random.default_rng(1)
    model = build_model(_spec()).eval()
    features = rng.normal(size=(30, model.backbone.num_features)).astype(np.float32)
    z = rng.normal(size=(30, 5)).astype(np.float32)
    init_heads_ridge(model, features, z, alpha=10.0)
    x = torch.from_numpy(features)
    out = torch.cat([h(x) for h in model.heads], 1)[:, model.order].detach().numpy()
    expected = np.concatenate([fit_ridge_path(features, z[:, c]).predict(features, 10.0)
                               for c in ([0, 2, 4], [1, 3])], 1)[:, np.argsort([0, 2, 4, 1, 3])]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_freezing_stops_gradients_and_keeps_batch_norm_statistics():
    model = build_model(ModelSpec("test_efficientnet", 32, [0, 1], {"all": [0, 1]}))
    frozen = freeze_blocks(model, 2)
    assert frozen and all(not p.requires_grad for n, p in model.backbone.named_parameters()
                          if n in frozen)
    assert any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert all(not m.training for m in model.frozen) and model.heads.training
    assert freeze_blocks(build_model(_spec()), 0) == []


def test_frozen_batch_norm_keeps_running_statistics_in_training():
    model = build_model(ModelSpec("test_efficientnet", 32, [0, 1], {"all": [0, 1]}))
    model.freeze_bn = True
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    model(_images())
    assert norms and not any(m.training for m in norms) and model.heads.training
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms))


def test_weights_roundtrip(tmp_path):
    model = build_model(_spec(dims={"a": 2}), seed=1)
    set_targets(model, np.random.default_rng(2).normal(size=(10, 5)).astype(np.float32))
    save_weights(model, tmp_path / "w.safetensors")
    other = load_weights(build_model(_spec(dims={"a": 2}), seed=7), tmp_path / "w.safetensors")
    x = _images()
    torch.testing.assert_close(model.eval()(x), other.eval()(x))
    torch.testing.assert_close(model.y_std, other.y_std)


def test_scaler_pca_and_plans():
    mean, std = fit_scaler(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(mean, [2, 5])
    np.testing.assert_allclose(std, [1, 1])  # a constant gene is not divided by zero
    assert fit_pca(np.random.default_rng(0).normal(size=(4, 6)), 10).shape == (4, 6)
    groups = {"a": np.arange(3), "b": np.arange(40)}
    assert plan_heads(groups, None, 100) == {"a": None, "b": None}
    assert plan_heads(groups, 16, 100) == {"a": 3, "b": 16}
    assert plan_heads(groups, 16, 10) == {"a": 3, "b": 9}


def test_hub_models_resolve_to_timm_arguments():
    name, kwargs = resolve_hub_model("UNI")
    assert name == "vit_large_patch16_224" and kwargs["init_values"] == 1e-5
    assert HUB_MODELS["uni"]["hub"] == "hf-hub:MahmoodLab/uni"
    _, kwargs = resolve_hub_model("virchow2")
    assert kwargs["act_layer"] is torch.nn.SiLU and callable(kwargs["mlp_layer"])
    assert resolve_hub_model("convnext_tiny") == ("convnext_tiny", {})
    assert all(p["hub"] is None or p["hub"].startswith("hf-hub:") for p in HUB_MODELS.values())


def test_mixed_precision_is_off_on_cpu():
    assert amp_dtype(torch.device("cpu")) is None
    assert not grad_scaler(torch.device("cpu")).is_enabled()


def test_precision_can_be_forced_and_mixed_precision_needs_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cuda, "fp16") is torch.float16 and amp_dtype(cuda, "bf16") is torch.bfloat16
    assert amp_dtype(cuda, "fp32") is None and amp_dtype(cpu, "fp32") is None
    assert not grad_scaler(cpu, "fp32").is_enabled()
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    for precision in ("fp16", "bf16"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            amp_dtype(cpu, precision)
    with pytest.raises(ValueError, match="choose from"):
        amp_dtype(cuda, "fp8")


def test_finetuning_starts_where_ridge_on_the_same_features_ends():
    """With FEATURE_STAGES and FEATURE_CROPS the fine-tune model reads the ridge recipe's
    features (D4-averaged with TTA), so its ridge-initialised heads (epoch 0) predict what the
    ridge recipe predicts on those features at the alpha the probe chose."""
    from utils.config import TrainConfig
    from utils.features import extract_features
    from utils.train import fit_ridge_path, init_heads_by_ridge
    from utils.units import Unit, predict, to_original, unit_spec

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    y = (images.reshape(24, -1, 3).mean(1) @ rng.normal(size=(3, 6)) / 50
         + rng.normal(size=(24, 6))).astype(np.float32)
    cfg = TrainConfig(recipe="finetune", backbone="test_convnext", pretrained=False, img_size=32,
                      feature_stages="all", feature_crops=[1.0, 0.5], target_pca=3, tta=True)
    train, val = np.arange(18), np.arange(18, 24)
    unit = Unit("fold0", 0, 0, train, val, np.arange(6), {"all": np.arange(6)})
    model = build_model(unit_spec(unit, cfg), pretrained=False).eval()
    assert model.spec.stages == "all" and model.spec.crops == [1.0, 0.5]
    expected_features = extract_features(model.backbone, images, cfg.feature_spec, progress=False)
    features = predict(model, images, None, tta=True, features=True)
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-4)
    z = set_targets(model, y[train])
    z_all = ((y - model.y_mean.numpy()) / model.y_std.numpy()).astype(np.float32)
    assert np.allclose(z, z_all[train])
    alpha = init_heads_by_ridge(model, cfg, images, unit, z_all, y)
    start = to_original(model, predict(model, images, val, tta=True))
    ridge = fit_ridge_path(expected_features[train], y[train], None, 3).predict(
        expected_features[val], alpha)
    np.testing.assert_allclose(start, ridge, rtol=1e-3, atol=1e-3)
    assert np.abs(start - y[train].mean(0)).max() > 1e-2  # not the mean profile
