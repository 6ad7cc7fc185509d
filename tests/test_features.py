"""Richer frozen features: several backbone stages (FEATURE_STAGES), centre crops
(FEATURE_CROPS) and Macenko stain normalisation (STAIN_NORM), each part of the cache key."""

import json
import os

import numpy as np
import pytest
import torch

from utils.config import FeatureSpec, TrainConfig
from utils.features import extract_features, fit_stain_reference, normalise_stains
from utils.models import (
    Preprocess,
    centre_crop,
    create_backbone,
    data_config,
    embed,
    stage_channels,
    stage_indices,
    tta_views,
)

SIZE = 64
HE_REFERENCE = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])  # Macenko's H and E vectors
HE_SHIFTED = np.array([[0.45, 0.30], [0.85, 0.90], [0.27, 0.32]])  # another lab's stains


def spec(**changes) -> FeatureSpec:
    """Features of a test model at SIZE px (D4 TTA), with `changes`."""
    return FeatureSpec(**{"backbone": "test_convnext", "pretrained": False, "img_size": SIZE,
                          **changes})


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def today_features(model, x: np.ndarray) -> np.ndarray:
    """The kit's features before this change: model(preprocess(x)) averaged over D4 views."""
    preprocess = Preprocess(data_config(model, SIZE))
    with torch.inference_mode():
        batch = preprocess(torch.from_numpy(x).permute(0, 3, 1, 2))
        return torch.stack([model.eval()(v) for v in tta_views(batch)]).mean(0).numpy()


def stained(stains: np.ndarray, seed: int = 0, size: int = 48) -> np.ndarray:
    """A synthetic H&E patch: Beer–Lambert mixing of random H and E concentrations."""
    rng = np.random.default_rng(seed)
    concentrations = rng.gamma(2.0, 0.4, (2, size * size)) * [[1.0], [0.5]]
    rgb = 240 * np.exp(-(stains / np.linalg.norm(stains, axis=0)) @ concentrations)
    return rgb.T.reshape(size, size, 3).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext", "test_vit",
                                  "test_mambaout"])
def test_stage_features_are_the_pooled_maps_then_the_embedding(name):
    model = create_backbone(name, pretrained=False).eval()
    channels = [info["num_chs"] for info in model.feature_info]
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        out = embed(model, x, stage_indices(model, (-2, -1)))
        maps = model.forward_intermediates(x, indices=[len(channels) - 2], intermediates_only=True)
        pooled = model(x)
    width = pooled.shape[1]  # the pooled embedding (MambaOut: its head's hidden size)
    assert out.shape == (2, channels[-2] + channels[-1] + width)
    assert stage_channels(model, (-2, -1)) == out.shape[1]
    assert stage_channels(model, "all") == sum(channels) + width
    torch.testing.assert_close(out[:, :channels[-2]], maps[0].mean(dim=(-2, -1)))
    torch.testing.assert_close(out[:, -width:], pooled, rtol=1e-4, atol=1e-5)


def test_default_features_equal_todays_exactly():
    model = create_backbone("test_efficientnet", pretrained=False)
    x = images()
    default = extract_features(model, x, spec(), progress=False)
    np.testing.assert_array_equal(default, today_features(model, x))
    staged = extract_features(model, x, spec(stages="all"), progress=False)
    assert staged.shape == (3, stage_channels(model, "all"))
    np.testing.assert_allclose(staged[:, -model.num_features:], default, rtol=1e-4, atol=1e-5)


def test_crops_change_what_the_model_sees():
    model = create_backbone("test_convnext", pretrained=False)
    x = images()
    whole = extract_features(model, x, spec(tta=False), progress=False)
    both = extract_features(model, x, spec(tta=False, crops=(1.0, 0.5)), progress=False)
    assert both.shape == (3, 2 * whole.shape[1])
    np.testing.assert_allclose(both[:, :whole.shape[1]], whole, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both[:, whole.shape[1]:], whole, atol=1e-3)
    centre = x[:, 16:48, 16:48]  # the centre half, resized up to the input like a patch
    np.testing.assert_allclose(both[:, whole.shape[1]:], extract_features(
        model, np.ascontiguousarray(centre), spec(tta=False), progress=False),
        rtol=1e-4, atol=1e-5)
    assert centre_crop(torch.zeros(1, 3, 10, 10), 0.25).shape[-2:] == (2, 2)


def test_macenko_maps_a_stain_shifted_patch_closer_to_the_reference():
    reference_patch = stained(HE_REFERENCE)
    shifted = stained(HE_SHIFTED)  # the same tissue (concentrations), other stains
    reference = fit_stain_reference(reference_patch[None])
    normalised, kept = normalise_stains(shifted[None], reference)
    assert kept == 0 and normalised.dtype == np.uint8
    before = np.abs(shifted.astype(float) - reference_patch).mean()
    after = np.abs(normalised[0].astype(float) - reference_patch).mean()
    assert after < 0.5 * before


def test_a_blank_patch_is_kept_as_it_is_and_counted():
    reference = fit_stain_reference(stained(HE_REFERENCE)[None])
    blank = np.full((48, 48, 3), 250, np.uint8)
    batch = np.stack([blank, stained(HE_SHIFTED), blank])
    out, kept = normalise_stains(batch, reference)
    assert kept == 2
    np.testing.assert_array_equal(out[0], blank)
    np.testing.assert_array_equal(out[2], blank)
    assert not np.array_equal(out[1], batch[1])
    with pytest.raises(ValueError, match="STAIN_NORM"):
        fit_stain_reference(blank[None])


def test_cache_names_differ_per_parameter():
    def name(**kwargs):
        return FeatureSpec("m", True, 224, True, 0, **kwargs).cache_name("train")

    names = {name(), name(stages=(3, 4)), name(stages=(2, 3, 4)), name(stages="all"),
             name(crops=(1.0, 0.5)), name(crops=(0.5,)), name(crops=(1.0, 0.75)),
             name(stain_norm="macenko"), name(stages="all", stain_norm="macenko")}
    assert len(names) == 9
    assert name() == name(stages=None, crops=(1.0,), stain_norm=None)  # old caches still hold


def test_cached_features_keys_and_stain_report(dacon_dir, tmp_path):
    from utils.data import load_data
    from utils.features import cached_features

    data = load_data(dacon_dir)
    folder = tmp_path / "cache"
    plain = cached_features(data, spec(img_size=32, tta=False), cache_dir=folder)
    staged = cached_features(data, spec(img_size=32, tta=False, stages=(-1,)), cache_dir=folder)
    cropped = cached_features(data, spec(img_size=32, tta=False, crops=(1.0, 0.5)),
                              cache_dir=folder)
    assert staged["train"].shape[1] > plain["train"].shape[1]
    np.testing.assert_allclose(cropped["train"][:, :plain["train"].shape[1]], plain["train"],
                               rtol=1e-5, atol=1e-6)
    normalised = cached_features(data, spec(img_size=32, tta=False, stain_norm="macenko"),
                                 cache_dir=folder)
    assert not np.allclose(normalised["train"], plain["train"], atol=1e-3)
    folder = tmp_path / "cache" / "features"
    keys = [json.loads(p.read_text()) for p in folder.glob("*_train.json")]
    assert len(keys) == 4 and len({json.dumps(k, sort_keys=True) for k in keys}) == 4
    report = json.loads((folder / "stain_reference.json").read_text())
    assert set(report["kept_as_is"]) == {"train", "test"}
    assert report["kept_as_is"]["train"]["patches"] == len(data.train)


def test_features_survive_the_data_mounted_again(dacon_dir, tmp_path, monkeypatch):
    """Image files with new times (a dataset mounted again after a restart) but the same bytes
    reuse the cached features: nothing is extracted again."""
    import shutil

    from utils import features
    from utils.data import load_data

    data_dir = shutil.copytree(dacon_dir, tmp_path / "data")
    folder = tmp_path / "cache"
    first = features.cached_features(load_data(data_dir), spec(img_size=64, tta=False, tiles=2),
                                     cache_dir=folder)
    for png in data_dir.rglob("*.png"):
        os.utime(png, ns=(10**18, 10**18))

    def refuse(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(features, "extract_features", refuse)
    again = features.cached_features(load_data(data_dir), spec(img_size=64, tta=False, tiles=2),
                                     cache_dir=folder)
    np.testing.assert_array_equal(again["test"], first["test"])


@pytest.mark.parametrize("field, value", [
    ("feature_stages", "last"), ("feature_stages", [1.5]), ("feature_stages", []),
    ("feature_crops", [0.0]), ("feature_crops", [1.5]), ("feature_crops", []),
    ("stain_norm", "reinhard")])
def test_bad_values_are_named(field, value):
    with pytest.raises(ValueError, match=field.upper()):
        TrainConfig(**{field: value})


def test_parameters_parse_text_and_are_refused_by_finetune():
    cfg = TrainConfig(feature_stages="-2,-1", feature_crops="1,0.5")
    assert cfg.feature_stages == (-2, -1) and cfg.feature_crops == (1.0, 0.5)
    assert TrainConfig(feature_stages="all").feature_stages == "all"
    with pytest.raises(ValueError, match="STAIN_NORM"):
        TrainConfig(recipe="finetune", stain_norm="macenko")


def test_stage_errors_name_the_parameter():
    model = create_backbone("test_efficientnet", pretrained=False)
    with pytest.raises(ValueError, match="FEATURE_STAGES"):
        stage_indices(model, (7,))
    with pytest.raises(ValueError, match="FEATURE_STAGES"):
        stage_indices(torch.nn.Linear(3, 3), (-1,))
    with pytest.raises(ValueError, match="FEATURE_CROPS"):
        spec(crops=(2.0,))


def test_each_feature_choice_is_in_the_cache_name_and_key(dacon_dir):
    """A spec's cache file and key name every choice that changes its features (and nothing
    at the defaults), so two specs never share a cache file."""
    from utils.data import images_content_key, load_data
    from utils.features import cache_entry

    data = load_data(dacon_dir)
    images = {s: images_content_key(data, s) for s in ("train", "test")}
    base = {"backbone": "m", "pretrained": "w.safetensors", "img_size": 224, "tta": True,
            "seed": None}
    cases = [
        ({}, "m_file-w_224px_d4", {}),
        ({"tta": False}, "m_file-w_224px_noTTA", {"tta": False}),
        ({"mpp": 0.3, "model_mpp": 0.5}, "m_file-w_224px_mpp0.3to0.5-pad_d4",
         {"mpp": 0.3, "model_mpp": 0.5, "mpp_fit": "pad"}),
        ({"stages": "all", "crops": (1.0, 0.5)}, "m_file-w_224px_stages-all_crops-1-0.5_d4",
         {"stages": "all", "crops": [1.0, 0.5]}),
        ({"dtype": "float16"}, "m_file-w_224px_d4_float16", {"dtype": "float16"}),
        ({"pretrained": False, "seed": 3}, "m_random-seed3_224px_d4",
         {"pretrained": "False", "seed": 3}),
        ({"stain_norm": "macenko"}, "m_file-w_224px_macenko_d4",
         {"stain_norm": "macenko", "stain_reference": images["train"]}),
    ]
    for change, tag, key in cases:
        feature_spec = FeatureSpec(**{"backbone": "m", "pretrained": "w.safetensors",
                                      "img_size": 224, **change})
        name, got = cache_entry(data, "test", feature_spec)
        assert name == f"{tag}_test.npy"
        assert got == {**base, **key, "images": images["test"]}
    assert len({tag for _, tag, _ in cases}) == len(cases)


# --- COMPILE: torch.compile for extraction -----------------------------------------------------

def test_compile_rule_is_auto_on_long_cpu_extractions_only():
    from utils.choices import COMPILE_MIN_PASSES
    from utils.features import should_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile("auto", cpu, COMPILE_MIN_PASSES)
    assert not should_compile("auto", cpu, COMPILE_MIN_PASSES - 1)
    assert not should_compile("auto", cuda, 10 ** 9)  # unmeasured on a GPU: off unless asked
    assert should_compile(True, cuda, 1) and not should_compile(False, cpu, 10 ** 9)
    with pytest.raises(ValueError, match="COMPILE"):
        TrainConfig(compile="yes")


def test_compiled_features_equal_eager_ones_with_a_padded_last_batch(monkeypatch):
    """Every pass goes through the compiled function, with one shape (the last, short batch
    padded, then cut off again), and the features equal eager extraction's to float tolerance."""
    compile_, shapes = torch.compile, []

    def spy(fn, **kwargs):
        compiled = compile_(fn, **kwargs)

        def forward(x):
            shapes.append(tuple(x.shape))
            return compiled(x)
        return forward

    model = create_backbone("test_efficientnet", pretrained=False)
    x = images(5)
    settings = spec(stages="all", crops=(1.0, 0.5), tta="flips")
    eager = extract_features(model, x, settings, batch_size=4, progress=False, compile=False)
    assert not shapes
    monkeypatch.setattr(torch, "compile", spy)
    fast = extract_features(model, x, settings, batch_size=4, progress=False, compile=True)
    assert len(shapes) == 2 * 2 * 4 and set(shapes) == {(4, 3, SIZE, SIZE)}  # batches×crops×views
    assert fast.shape == eager.shape == (5, 2 * stage_channels(model, "all"))
    np.testing.assert_allclose(fast, eager, rtol=1e-4, atol=1e-5)


def test_a_runtime_that_cannot_compile_extracts_eagerly_and_says_why(monkeypatch):
    from utils.features import CompileWarning

    def broken(fn, **kwargs):
        def fail(x):
            raise RuntimeError("no C++ compiler found\nlong trace")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    model = create_backbone("test_convnext", pretrained=False)
    x = images()
    with pytest.warns(CompileWarning, match="COMPILE: torch.compile failed .*no C\\+\\+ compiler"):
        got = extract_features(model, x, spec(tta=False), progress=False, compile=True)
    np.testing.assert_array_equal(got, extract_features(model, x, spec(tta=False),
                                                        progress=False, compile=False))
