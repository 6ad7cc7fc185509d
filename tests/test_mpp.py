"""Magnification: patches rescaled from MPP to MODEL_MPP µm/px, fitted to the model input by
padding, tiling or as they are; both recipes and the feature cache honour it."""

import numpy as np
import pytest
import torch

from utils.choices import DACON_MPP
from utils.config import FeatureSpec, TrainConfig
from utils.features import cached_features, extract_features
from utils.models import ModelSpec, Preprocess, build_model, create_backbone, data_config, fit_field


def spec(**changes) -> FeatureSpec:
    """test_convnext, random weights, 32 px, no TTA, with `changes`."""
    return FeatureSpec(**{"backbone": "test_convnext", "pretrained": False, "img_size": 32,
                          "tta": False, **changes})


def feature_cache_name(backbone, pretrained, img_size, tta, seed, split, mpp=None,
                       model_mpp=None, mpp_fit="pad", dtype="float32"):
    """The cache file name of a feature set."""
    return FeatureSpec(backbone, pretrained, img_size, tta, seed, mpp, model_mpp, mpp_fit,
                       dtype=dtype).cache_name(split)

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
          "interpolation": "bilinear"}


def rescaled(scale: float, fit: str) -> dict:
    return {**CONFIG, "mpp_scale": scale, "mpp_fit": fit}


def test_dacon_default_is_documented_spot_pitch():
    assert TrainConfig().mpp == DACON_MPP and abs(DACON_MPP - 100 / 329) < 0.01
    assert TrainConfig().model_mpp is None  # no rescaling unless asked


@pytest.mark.parametrize("field, value", [("mpp", 0), ("model_mpp", -1.0), ("mpp_fit", "crop"),
                                          ("feature_dtype", "int8")])
def test_bad_magnification_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=field.upper()):
        TrainConfig(**{field: value})


def test_without_model_mpp_patches_are_only_resized():
    x = torch.full((1, 3, 48, 48), 255, dtype=torch.uint8)
    assert Preprocess(CONFIG)(x).shape == (1, 3, 32, 32)


def test_a_small_field_is_downsampled_then_reflect_padded():
    """224 px at 0.28 µm/px is ~125 px at 0.5: here 64 px × 0.25 = 16 px, padded to 32."""
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    out = Preprocess(rescaled(0.25, "pad"))(x)
    assert out.shape == (1, 3, 32, 32)
    core = Preprocess({**CONFIG, "input_size": (3, 16, 16)})(x)  # the same resampling
    torch.testing.assert_close(out[..., 8:24, 8:24], core)
    torch.testing.assert_close(out[..., 8:24, 7], core[..., :, 1])  # reflection, not zeros


def test_tiling_repeats_the_patch_mirrored():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = fit_field(x, (12, 12), "tile")
    assert out.shape == (1, 1, 12, 12)
    torch.testing.assert_close(out[..., 4:8, 4:8], x)  # the patch stays in the centre
    torch.testing.assert_close(out[..., 4:8, 0:4], x.flip(-1))
    torch.testing.assert_close(out[..., 0:4, 4:8], x.flip(-2))


def test_a_large_field_is_upsampled_then_centre_cropped():
    """her2st: 224 px at 0.63 µm/px is 282 px at 0.5: the model sees the central 224 px."""
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    for fit in ("pad", "tile"):
        out = Preprocess(rescaled(2.0, fit))(x)
        full = Preprocess({**CONFIG, "input_size": (3, 64, 64)})(x)
        torch.testing.assert_close(out, full[..., 16:48, 16:48])


def test_resize_keeps_the_rescaled_field_whole():
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    assert Preprocess(rescaled(0.5, "resize"))(x).shape == (2, 3, 20, 20)
    assert Preprocess(rescaled(1.5, "resize"))(x).shape == (2, 3, 60, 60)


def test_mpp_changes_what_the_model_sees():
    model = create_backbone("test_convnext", pretrained=False)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    plain = extract_features(model, images, spec(), progress=False)
    same = extract_features(model, images, spec(mpp=0.5, model_mpp=0.5), progress=False)
    half = extract_features(model, images, spec(mpp=0.25, model_mpp=0.5), progress=False)
    np.testing.assert_allclose(plain, same, rtol=1e-4, atol=1e-5)  # scale 1: nothing changes
    assert not np.allclose(plain, half, atol=1e-3)
    with pytest.raises(ValueError, match="MODEL_MPP"):
        data_config(model, 32, mpp=None, model_mpp=0.5)


def test_fine_tune_models_carry_the_rescaling():
    spec = ModelSpec("test_convnext", 32, [0, 1], {"all": [0, 1]}, mpp=0.25, model_mpp=0.5,
                     mpp_fit="tile")
    model = build_model(spec)
    assert model.preprocess.scale == 0.5 and model.preprocess.fit == "tile"
    assert ModelSpec(**spec.to_dict()) == spec
    assert build_model(ModelSpec("test_convnext", 32, [0], {"all": [0]})).preprocess.scale is None


def test_cache_name_and_key_include_the_rescaling():
    base = feature_cache_name("m", True, 224, True, 0, "train")
    names = {base, feature_cache_name("m", True, 224, True, 0, "train", 0.63, 0.5, "pad"),
             feature_cache_name("m", True, 224, True, 0, "train", 0.63, 0.5, "resize"),
             feature_cache_name("m", True, 224, True, 0, "train", 0.63, 1.0, "pad"),
             feature_cache_name("m", True, 224, True, 0, "train", 0.3, 0.5, "pad"),
             feature_cache_name("m", True, 224, True, 0, "train", dtype="float16")}
    assert len(names) == 6
    assert base == feature_cache_name("m", True, 224, True, 0, "train", 0.63, None)


def test_float16_cache_is_half_the_size_and_read_back_as_float32(dacon_dir, tmp_path):
    from utils.data import load_data

    data = load_data(dacon_dir)
    full = cached_features(data, spec(), cache_dir=tmp_path / "cache")
    half = cached_features(data, spec(dtype="float16"), cache_dir=tmp_path / "cache")
    assert half["train"].dtype == np.float32
    np.testing.assert_allclose(half["train"], full["train"], rtol=2e-3, atol=2e-3)
    files = {p.name: p.stat().st_size for p in (tmp_path / "cache" / "features").glob("*.npy")}
    small = [s for n, s in files.items() if "float16_train" in n]
    large = [s for n, s in files.items() if "float16" not in n and n.endswith("_train.npy")]
    assert small and large and small[0] < 0.6 * large[0]
    rescaled_features = cached_features(data, spec(mpp=0.25, model_mpp=0.5),
                                        cache_dir=tmp_path / "cache")
    assert not np.allclose(rescaled_features["train"], full["train"], atol=1e-3)
