"""timm backbones by name, their own preprocessing, D4 views and cached features."""

import numpy as np
import pytest
import torch

from utils.config import FeatureSpec
from utils.features import cached_features, extract_features
from utils.models import Preprocess, create_backbone, data_config, tta_views


def cache_name(backbone, pretrained, img_size, tta, seed, split):
    """The cache file name of a feature set."""
    return FeatureSpec(backbone, pretrained, img_size, tta, seed).cache_name(split)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match="convnext_tiny"):
        create_backbone("convnext_tinny", pretrained=False)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_backbone("test_convnext", pretrained=str(tmp_path / "nope.safetensors"))


def test_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("test_convnext", pretrained=False, seed=1)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    loaded = create_backbone("test_convnext", pretrained=str(tmp_path / "w.safetensors"), seed=2)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_random_init_is_seeded():
    a = create_backbone("test_convnext", pretrained=False, seed=3).state_dict()
    b = create_backbone("test_convnext", pretrained=False, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["test_vit", "test_convnext", "test_efficientnet"])
def test_img_size_reaches_models_that_take_it(name):
    model = create_backbone(name, pretrained=False, img_size=64)
    x = torch.zeros(2, 3, 64, 64)
    assert model.eval()(x).shape == (2, model.num_features)


def test_preprocess_uses_the_model_data_config():
    model = create_backbone("test_convnext", pretrained=False)
    config = data_config(model, img_size=32)
    x = torch.full((1, 3, 48, 48), 255, dtype=torch.uint8)
    out = Preprocess(config)(x)
    assert out.shape == (1, 3, 32, 32)
    expected = (1 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
    torch.testing.assert_close(out[0, :, 5, 5], expected.float(), rtol=1e-4, atol=1e-4)


def test_tta_views_are_the_eight_dihedral_transforms_or_the_four_flips():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = [v.flatten().tolist() for v in tta_views(x)]
    assert len(views) == 8 and len({tuple(v) for v in views}) == 8
    assert [v.flatten().tolist() for v in tta_views(x, tta=False)] == [x.flatten().tolist()]
    flips = {tuple(v.flatten().tolist()) for v in tta_views(x, "flips")}
    assert len(flips) == 4 and flips < {tuple(v) for v in views}  # a subgroup of D4
    flipped = {tuple(v.flatten().tolist()) for v in tta_views(x.flip(-1), "flips")}
    assert flipped == flips  # closed under a flip: flip-averaged features are flip-invariant


def test_tta_is_true_flips_or_false_and_names_its_cache():
    from utils.choices import TTA_VIEWS
    from utils.config import FeatureSpec, TrainConfig

    tags = {tta: FeatureSpec("test_convnext", False, 32, tta).tag for tta in TTA_VIEWS}
    assert len(set(tags.values())) == 3 and tags[True].endswith("_d4")  # old caches still match
    assert TrainConfig(tta="flips").feature_spec.tta == "flips"
    assert TrainConfig(tta="flips", smoke=True).applied_tta is False
    for bad in ("rotations", 4, None):
        with pytest.raises(ValueError, match="TTA="):
            TrainConfig(tta=bad)


def test_tta_features_are_invariant_to_flips_and_rotations():
    model = create_backbone("test_convnext", pretrained=False)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    turned = np.rot90(images[:, ::-1], k=1, axes=(1, 2)).copy()
    spec = FeatureSpec("test_convnext", False, 32, tta=True)
    a = extract_features(model, images, spec)
    b = extract_features(model, turned, spec)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    plain = extract_features(model, images, FeatureSpec("test_convnext", False, 32, tta=False))
    assert a.shape == plain.shape == (3, model.num_features) and not np.allclose(a, plain)


def test_cache_names_differ_by_what_changes_features():
    names = {cache_name("m", True, 64, True, 0, "train"),
             cache_name("m", False, 64, True, 0, "train"),
             cache_name("m", False, 64, True, 1, "train"),
             cache_name("m", "/w/x.safetensors", 64, True, 0, "train"),
             cache_name("m", True, 96, True, 0, "train"),
             cache_name("m", True, 64, False, 0, "train"),
             cache_name("m", True, 64, True, 0, "test")}
    assert len(names) == 7
    assert "/" not in cache_name("hf-hub:org/model", True, None, True, 0, "train")


def test_cached_features_are_computed_once(dacon_dir, tmp_path, monkeypatch):
    from utils import features
    from utils.data import load_data

    data = load_data(dacon_dir)
    kwargs = dict(spec=FeatureSpec("test_convnext", False, 32, tta=False),
                  cache_dir=tmp_path / "cache")
    first = cached_features(data, **kwargs)
    assert first["train"].shape[0] == len(data.train) and first["test"].shape[0] == len(data.test)
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: 1 / 0)
    second = cached_features(data, **kwargs)
    np.testing.assert_array_equal(first["train"], second["train"])
