"""Augmentation candidates, the HED stain jitter, policy files and the screening scores."""

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from utils import screening
from utils.augment import (
    build_augment,
    build_transform,
    candidate_spec,
    hed_to_rgb,
    is_geometric,
    jitter_hed,
    kit_transforms,
    list_candidates,
    make_policy,
    read_policy,
    rgb_to_hed,
    save_policy,
)
from utils.choices import AUGMENT_CANDIDATES as CANDIDATES
from utils.choices import LEVELS
from utils.config import ScreenConfig, from_params
from utils.plots import save_figure

ISSUE_NAMES = {"HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine",
               "RandomBrightnessContrast", "ColorJitter", "HueSaturationValue", "Equalize",
               "GaussianBlur", "GaussNoise", "CLAHE", "HEDJitter"}


def make_he_patches(n: int = 6, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth synthetic H&E patches: haematoxylin and eosin densities drawn as blurred noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    fields = gaussian_filter(rng.random((n, size, size, 2)), sigma=(0, 3, 3, 0), mode="wrap")
    fields = (fields - fields.min()) / np.ptp(fields)
    hed = np.concatenate([0.15 * fields[..., :1], 0.06 * fields[..., 1:],
                          np.zeros((n, size, size, 1))], axis=-1)
    return hed_to_rgb(hed.astype(np.float32))


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return make_he_patches()


# --- candidates ------------------------------------------------------------------------------

def test_registry_covers_the_issue_list_with_levels_for_photometric_ones():
    names = {candidate_spec(k)["name"] for k in list_candidates()}
    assert names == ISSUE_NAMES
    for name in ISSUE_NAMES - {"HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine",
                               "Equalize"}:
        assert [k for k in list_candidates() if k.startswith(name + ":")] == \
            [f"{name}:{level}" for level in LEVELS]
    with pytest.raises(ValueError, match="unknown augmentation candidate 'Blur:weak'"):
        candidate_spec("Blur:weak")


@pytest.mark.parametrize("key", list_candidates())
def test_every_candidate_builds_without_warnings_and_keeps_shape_and_dtype(key, patches):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated or invalid argument warns in albumentations
        out = screening.augment_images(key, patches, seed=1)
    assert out.shape == patches.shape and out.dtype == np.uint8


def test_candidate_spec_is_a_copy():
    spec = candidate_spec("Affine")
    spec["params"]["rotate"] = [0, 0]
    assert CANDIDATES["Affine"]["params"]["rotate"] == [-15, 15]


@pytest.mark.parametrize("key", ["HorizontalFlip", "VerticalFlip", "RandomRotate90"])
def test_flips_and_rotations_leave_the_stain_score_exactly_unchanged(key, patches):
    out = screening.augment_images(key, patches, seed=2)
    assert not np.array_equal(out, patches) or key == "RandomRotate90"
    assert np.array_equal(screening.stain_shift(patches, out), np.zeros(len(patches)))


def test_affine_with_reflected_border_barely_moves_the_stain(patches):
    scale = screening.stain_spread(patches)
    affine = screening.stain_shift(patches, screening.augment_images("Affine", patches), scale)
    bright = screening.stain_shift(
        patches, screening.augment_images("RandomBrightnessContrast:strong", patches), scale)
    assert affine.mean() < 0.05 and bright.mean() > 5 * affine.mean(), (affine, bright)


# --- HED stain jitter ------------------------------------------------------------------------

def test_rgb_to_hed_matches_skimage_where_skimage_does_not_clip(patches):
    from skimage.color import rgb2hed

    np.testing.assert_allclose(np.maximum(rgb_to_hed(patches), 0), rgb2hed(patches), atol=1e-6)


def test_hed_jitter_with_zero_strength_is_the_identity():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image[0, 0], image[0, 1] = 0, 255
    jitter = kit_transforms()["HEDJitter"](alpha_limit=0.0, beta_limit=0.0, p=1.0)
    assert np.array_equal(jitter(image=image)["image"], image)


def test_hed_jitter_scales_the_chosen_stain_only(patches):
    out = jitter_hed(patches[0], np.array([1.3, 1.0, 1.0]), np.zeros(3))
    before, after = rgb_to_hed(patches[0]), rgb_to_hed(out)
    inside = (out > 2).all(-1) & (out < 253).all(-1)  # away from uint8 clipping
    ratio = after[..., 0][inside].sum() / before[..., 0][inside].sum()
    assert abs(ratio - 1.3) < 0.02, ratio
    assert np.abs(after[..., 1] - before[..., 1])[inside].mean() < 0.002
    with pytest.raises(ValueError, match="uint8 RGB"):
        jitter_hed(patches[0].astype(np.float32), np.ones(3), np.zeros(3))


def test_hed_jitter_draws_within_its_limits_and_pickles():
    jitter = build_transform({"name": "HEDJitter",
                              "params": {"alpha_limit": 0.1, "beta_limit": 0.01, "p": 1.0}})
    params = jitter.get_params()
    assert np.all(np.abs(params["alpha"] - 1) <= 0.1) and np.all(np.abs(params["beta"]) <= 0.01)
    clone = pickle.loads(pickle.dumps(jitter))
    assert type(clone) is type(jitter) and clone.alpha_limit == 0.1
    with pytest.raises(ValueError, match="bad parameters for HEDJitter"):
        build_transform({"name": "HEDJitter", "params": {"alpha_limit": 1.5}})


# --- recipes ---------------------------------------------------------------------------------

def test_recipe_file_round_trips_into_a_compose(tmp_path, patches):
    import albumentations as A

    kept = ["HorizontalFlip", "Affine", "GaussianBlur:weak", "GaussianBlur:strong",
            "HEDJitter:medium"]
    transforms = make_policy(kept)
    assert [t["name"] for t in transforms] == ["HorizontalFlip", "Affine", "GaussianBlur",
                                               "HEDJitter"]
    assert transforms[2] == candidate_spec("GaussianBlur:strong")  # the strongest kept level
    path = save_policy(tmp_path / "augment_policy.json", transforms, kept=kept)
    assert json.loads(path.read_text())["kept"] == kept and read_policy(path) == transforms
    compose = build_augment(path)
    assert isinstance(compose, A.Compose)
    assert [type(t).__name__ for t in compose.transforms] == [t["name"] for t in transforms]
    affine = compose.transforms[1]
    assert affine.rotate == (-15, 15) and affine.border_mode == 4 and affine.p == 0.5
    direct = screening.augment_images(transforms, patches, seed=3)
    assert np.array_equal(screening.augment_images(read_policy(path), patches, seed=3), direct)


def test_presets_build():
    assert build_augment("none") is None and build_augment(None) is None
    assert [type(t).__name__ for t in build_augment("flips").transforms] == ["SquareSymmetry"]
    assert len(build_augment("seed").transforms) == 3


def test_bad_recipes_are_errors_that_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in policy"):
        read_policy(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"transforms": {"name": "HorizontalFlip"}}')
    with pytest.raises(ValueError, match="needs a 'transforms' list"):
        read_policy(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown transform.*NoSuchFlip"):
        build_transform({"name": "NoSuchFlip"})
    with pytest.raises(ValueError, match=r"GaussNoise takes no argument\(s\) \['var_limit'\]"):
        build_transform({"name": "GaussNoise", "params": {"var_limit": [10, 50]}})
    with pytest.raises(ValueError, match="bad parameters for GaussNoise"):
        build_transform({"name": "GaussNoise", "params": {"std_range": [2, 3]}})


# --- scores ----------------------------------------------------------------------------------

def test_stain_shift_is_zero_for_identity_and_grows_with_a_stain_change(patches):
    assert np.array_equal(screening.stain_shift(patches, patches), np.zeros(len(patches)))
    pixels = patches.reshape(len(patches), -1, 3)  # same pixels in another order: same stain
    shuffled = pixels[:, np.random.default_rng(0).permutation(pixels.shape[1])]
    assert np.abs(screening.stain_shift(patches, shuffled.reshape(patches.shape))).max() == 0
    weak, strong = (jitter_hed(patches[0], np.array([a, a, 1.0]), np.zeros(3))[None]
                    for a in (1.05, 1.2))
    assert 0 < screening.stain_shift(patches[:1], weak)[0] < \
        screening.stain_shift(patches[:1], strong)[0]
    with pytest.raises(ValueError, match="changed size"):
        screening.stain_shift(patches, patches[:, :40])


def test_ssim_and_cosine_similarity_of_identical_inputs_are_one(patches):
    np.testing.assert_allclose(screening.ssim_scores(patches, patches), 1.0)
    assert screening.ssim_scores(patches, 255 - patches).max() < 0.5
    a = np.random.default_rng(0).normal(size=(4, 8))
    np.testing.assert_allclose(screening.cosine_similarity(a, 3 * a), 1.0)
    np.testing.assert_allclose(screening.cosine_similarity(a, -a), -1.0)


def test_random_networks_give_similarity_one_and_distance_zero_for_identity(patches):
    cfg = ScreenConfig(dino_model="test_vit", dino_pretrained=False, img_size=64,
                       lpips_net="alex", lpips_pretrained=False, candidates=["HorizontalFlip"])
    scorers = screening.make_scorers(patches, cfg)
    assert set(scorers.fns) == {"dino_sim", "lpips", "stain_shift", "ssim"}
    assert scorers.selecting == ["stain_shift", "ssim"]  # random networks never select
    assert "random weights" in scorers.notes["dino_sim"]
    np.testing.assert_allclose(scorers.fns["dino_sim"](patches), 1.0, atol=1e-5)
    assert np.array_equal(scorers.fns["lpips"](patches), np.zeros(len(patches), np.float32))
    assert scorers.fns["lpips"](255 - patches).min() > 0


def test_without_network_dino_and_lpips_are_left_out_with_the_reason(tmp_path):
    code = ("from utils import screening as s; "
            "print(s.load_dino('vit_small_patch16_224.dino', True)[1]); "
            "print(s.load_lpips('alex', True)[1])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert out[0].startswith("unavailable: the weights of vit_small_patch16_224.dino could not "
                             "be fetched (HF_HUB_OFFLINE is set)"), out
    assert out[1].startswith("unavailable: HF_HUB_OFFLINE is set and torchvision's alex "
                             "weights are not in"), out


def test_screening_keeps_geometric_candidates_that_pixel_scores_would_reject(patches):
    cfg = ScreenConfig(dino_model=None, lpips_net=None, max_stain_shift=0.1, min_ssim=0.9)
    scorers = screening.make_scorers(patches, cfg)
    keys = ["HorizontalFlip", "GaussNoise:strong", "GaussianBlur:weak"]
    table = screening.screen_candidates(patches, keys, scorers)
    assert list(table.columns) == ["candidate", "geometric", "stain_shift", "ssim", "seconds"]
    table = screening.select_candidates(table, cfg.limits, scorers.selecting)
    assert table["ssim"].iloc[0] < 0.9 and table["stain_shift"].iloc[0] == 0
    assert table["kept"].tolist() == [True, False, True], table
    assert table["reason"].iloc[1].startswith("stain_shift ")


def test_select_candidates_uses_only_the_given_scores_and_limits():
    table = pd.DataFrame({"candidate": ["a", "b"], "geometric": [False, False],
                          "dino_sim": [0.5, 0.95], "stain_shift": [0.1, 0.4]})
    limits = {"dino_sim": 0.9, "stain_shift": 0.25}
    out = screening.select_candidates(table, limits, ["stain_shift"])
    assert out["kept"].tolist() == [True, False] and out["reason"][1] == "stain_shift 0.4 > 0.25"
    out = screening.select_candidates(table, {**limits, "stain_shift": None},
                                      ["dino_sim", "stain_shift"])
    assert out["kept"].tolist() == [False, True] and out["reason"][0] == "dino_sim 0.5 < 0.9"


def test_screen_config_checks_its_parameters():
    cfg = ScreenConfig(smoke=True, n_patches=64)
    assert cfg.n_screen == 8 and cfg.candidates == tuple(list_candidates())
    assert is_geometric("Affine") and not is_geometric("CLAHE:weak")
    assert ScreenConfig(candidates="CLAHE:weak").candidates == ("CLAHE:weak",)
    text = from_params(ScreenConfig, {"LPIPS_PRETRAINED": "False", "DINO_PRETRAINED": "True"})
    assert text.lpips_pretrained is False and text.dino_pretrained is True
    with pytest.raises(ValueError, match="unknown augmentation candidate"):
        ScreenConfig(candidates=["Flip"])
    with pytest.raises(ValueError, match="LPIPS_NET='resnet'"):
        ScreenConfig(lpips_net="resnet")
    with pytest.raises(ValueError, match="N_PATCHES"):
        ScreenConfig(n_patches=0)


# --- the notebook on the demo set ------------------------------------------------------------

@pytest.mark.smoke
def test_screening_notebook_wrote_recipe_table_and_figures(demo_pipeline):
    folder = demo_pipeline["runs"] / "augment"
    recipe = json.loads((folder / "augment_policy.json").read_text())
    table = pd.read_csv(folder / "screening.csv")
    assert table["candidate"].tolist() == list_candidates()
    assert {"stain_shift", "ssim", "dino_sim", "lpips", "kept", "reason"} <= set(table.columns)
    flips = table["candidate"].isin(["HorizontalFlip", "VerticalFlip", "RandomRotate90"])
    assert (table.loc[flips, "stain_shift"] == 0).all() and table.loc[flips, "kept"].all()
    assert recipe["kept"] == table.loc[table["kept"], "candidate"].tolist()
    assert recipe["transforms"] == make_policy(recipe["kept"])
    assert set(recipe["limits"]) == {"stain_shift", "ssim"}  # random networks never select
    assert len(build_augment(folder / "augment_policy.json").transforms) >= 3
    config = json.loads((folder / "config.json").read_text())
    assert config["smoke"] is False and config["n_screened"] == 8  # QUICK: 8 patches
    for name in ("scores.png", "examples_kept.png", "examples_rejected.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_figures_are_returned_and_saved_even_with_nothing_to_show(tmp_path, patches):
    table = pd.DataFrame({"candidate": ["HorizontalFlip", "CLAHE:weak"], "geometric": [True, False],
                          "stain_shift": [0.0, 0.4], "ssim": [0.2, 0.95], "kept": [True, False]})
    fig = screening.plot_scores(table, {"stain_shift": 0.25, "ssim": None})
    assert len(fig.axes) == 2
    fig = screening.plot_examples(patches, table, ["CLAHE:weak"], n=2)
    assert len(fig.axes) == 4 and "rejected" in fig.axes[0].get_ylabel()
    assert len(screening.plot_examples(patches, table, [], n=2).axes) == 4
    path = save_figure(fig, tmp_path, "examples")
    assert path.read_bytes()[:4] == b"\x89PNG"
