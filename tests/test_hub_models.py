"""Pathology foundation models on the hub (HUB_MODELS): the authors' architecture, pooling,
embedding size and preprocessing, built offline (pretrained=False or a local weights file)."""

import numpy as np
import pytest
import timm
import torch

from utils.features import batch_from_memory
from utils.models import HUB_MODELS, create_backbone, data_config, resolve_hub_model, set_pooling

SMALL = ["phikon", "h0-mini"]  # ViT-B sized: quick to build on a CPU


def tiny_reg_vit(**kwargs) -> torch.nn.Module:
    """A 2-block ViT-S/14 with 4 register tokens (the DINOv2 layout of H-optimus and Virchow2)."""
    return timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
                             img_size=56, depth=2, embed_dim=64, num_heads=2, **kwargs).eval()


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_build_and_give_the_documented_embedding(name):
    hub_model = HUB_MODELS[name]
    model = create_backbone(name, pretrained=False).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, hub_model["dim"]) and model.num_features == hub_model["dim"]
    config = data_config(model)
    assert config["mean"] == hub_model["mean"] and config["std"] == hub_model["std"]
    assert config["input_size"] == (3, 224, 224)
    assert config["interpolation"] == hub_model["interpolation"]


def test_h_optimus_normalisation_is_its_own():
    for name in ("h-optimus-0", "h-optimus-0-mirror", "h0-mini"):
        assert HUB_MODELS[name]["mean"] == (0.707223, 0.578729, 0.703617)
        assert HUB_MODELS[name]["std"] == (0.211883, 0.230117, 0.177517)
    assert HUB_MODELS["uni"]["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_every_preset_resolves_to_an_offline_timm_architecture(name):
    arch, kwargs = resolve_hub_model(name)
    assert arch in timm.list_models() and not arch.startswith("hf-hub:")
    assert HUB_MODELS[name]["pool"] in ("cls", "cls+mean")
    assert all(not isinstance(v, str) for k, v in kwargs.items() if k.endswith("_layer"))
    assert HUB_MODELS[name]["mpp"] == 0.5


def test_virchow2_arguments_give_class_plus_mean_of_patches_2560():
    arch, kwargs = resolve_hub_model("virchow2")
    assert kwargs["reg_tokens"] == 4 and kwargs["act_layer"] is torch.nn.SiLU
    model = timm.create_model(arch, pretrained=False, num_classes=0,
                              **{**kwargs, "depth": 1}).eval()  # one block: the same widths
    set_pooling(model, "cls+mean")
    assert model.num_prefix_tokens == 5 and model.num_features == 2560
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2560)


def test_cls_plus_mean_excludes_register_tokens():
    model = tiny_reg_vit()
    x = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        tokens = model.forward_features(x)  # (2, 1 + 4 + 16, 64)
        set_pooling(model, "cls+mean")
        pooled = model(x)
    assert tokens.shape[1] == 1 + 4 + 16 and model.num_features == 128
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    torch.testing.assert_close(pooled, expected)
    with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    assert not torch.allclose(pooled, with_registers)


def test_cls_pooling_is_the_class_token():
    model = tiny_reg_vit(global_pool="avg", fc_norm=False)
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        tokens = model.forward_features(x)
        set_pooling(model, "cls")
        torch.testing.assert_close(model(x), tokens[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        set_pooling(model, "max")


def test_a_local_weights_file_works_for_a_preset(tmp_path, monkeypatch):
    """A tiny hub model entry (register ViT, own mean/std, cls+mean) loads a safetensors file
    through create_backbone(name, pretrained=path), as a Kaggle user attaches weights."""
    from safetensors.torch import save_file

    from utils import models

    tiny = {"hub": "hf-hub:example/tiny", "arch": "vit_small_patch14_reg4_dinov2",
            "kwargs": {"img_size": 56, "depth": 2, "embed_dim": 64, "num_heads": 2},
            "mean": (0.7, 0.6, 0.7), "std": (0.2, 0.2, 0.2), "interpolation": "bicubic",
            "pool": "cls+mean", "dim": 128, "mpp": 0.5}
    monkeypatch.setitem(models.HUB_MODELS, "tiny-path", tiny)
    source = tiny_reg_vit()
    save_file(source.state_dict(), tmp_path / "tiny.safetensors")
    loaded = create_backbone("tiny-path", pretrained=str(tmp_path / "tiny.safetensors"),
                             seed=7).eval()
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    config = data_config(loaded)
    assert config["mean"] == (0.7, 0.6, 0.7) and config["input_size"] == (3, 56, 56)
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        tokens = source.forward_features(x)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        torch.testing.assert_close(loaded(x), expected)


def test_a_preset_without_hub_weights_asks_for_a_file():
    with pytest.raises(ValueError, match="local weights file"):
        create_backbone("phikon-v2", pretrained=True)


def test_img_size_overrides_a_preset_size():
    model = create_backbone("phikon", pretrained=False, img_size=112).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 768)
    assert data_config(model, 112)["input_size"] == (3, 112, 112)


@pytest.mark.parametrize("free, per_image, expected", [
    (16 * 2**30, 2**20, 1024),  # capped
    (16 * 2**30, 40 * 2**20, 128),  # 8 GiB / 40 MiB = 204 → 128
    (2**20, 2**30, 1),  # never below one
])
def test_batch_size_from_free_memory(free, per_image, expected):
    assert batch_from_memory(free, per_image) == expected


def test_ridge_takes_hest_pca_256():
    from utils.train import fit_ridge_path

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 512)), rng.normal(size=(300, 5))
    fit = fit_ridge_path(x, y, pca_dim=256)
    assert fit.components.shape == (256, 512) and fit.predict(x, 1.0).shape == (300, 5)
    full = fit_ridge_path(x, y)  # every direction the centred rows span: 300 rows, rank 299
    assert full.components.shape == (299, 512)
    assert not np.allclose(fit.predict(x, 1.0), full.predict(x, 1.0))
