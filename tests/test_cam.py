"""Grad-CAM: targets, layer choice per timm family, batched CAMs equal to pytorch-grad-cam's own,
CAM similarity within/between groups, run folders, and the 06 notebook's outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from utils import cam
from utils.cam import LayerTap, compute_cams, explain_run, make_method
from utils.cam_layers import choose_layer, parse_reshape
from utils.choices import CAM_METHODS
from utils.config import CamConfig
from utils.genes import within_between
from utils.metric import top_genes
from utils.models import ModelSpec, build_model, save_weights
from utils.runs import read_model_info

GENES = ["MT-CO1", "MT-ND1", "RPL3", "RPS6", "ACTB", "KRT8"]
GROUPS = {"MT": np.array([0, 1]), "RIBO": np.array([2, 3]), "other": np.array([4, 5])}


def _model(backbone="test_convnext", genes=range(6), heads=None, seed=0):
    genes = list(genes)
    heads = heads or {"a": list(range(len(genes)))}
    model = build_model(ModelSpec(backbone, 64, genes, heads), seed=seed).eval()
    model.y_mean.copy_(torch.linspace(1, 2, len(genes)))
    model.y_std.copy_(torch.linspace(0.5, 3, len(genes)))
    return model


def _images(n=5, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _outputs(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


# --- CAMs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["test_convnext", "test_vit"])
@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_cams_have_patch_shape_and_finite_values(backbone, method):
    model, images = _model(backbone), _images()
    choice = choose_layer(model.backbone, model.preprocess.size)
    weights = np.eye(6, dtype=np.float32)[:3]
    maps, scores = compute_cams(model, images, weights, choice, method, batch_size=2)
    assert maps.shape == (3, 5, *choice.grid) and scores.shape == (3, 5)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert maps.reshape(15, -1).max(axis=1).max() > 0.99  # scaled to [0, 1] like the library


@pytest.mark.parametrize("backbone", ["test_convnext", "test_vit", "test_efficientnet"])
@pytest.mark.parametrize("method", ["GradCAM", "GradCAM++", "HiResCAM", "EigenCAM"])
def test_batched_cams_equal_pytorch_grad_cams_own_per_target_call(backbone, method):
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = _model(backbone), _images(n=4)
    choice = choose_layer(model.backbone, model.preprocess.size)
    ours, _ = compute_cams(model, images, np.eye(6, dtype=np.float32)[[1, 4]], choice, method,
                           batch_size=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    cls = type(make_method(method, model, choice.module))
    for t, gene in enumerate([1, 4]):
        library = cls(model, [choice.module], reshape_transform=choice.reshape)
        expected = library(x, [ClassifierOutputTarget(gene)] * len(x))
        library.activations_and_grads.release()
        mine = scale_cam_image(np.maximum(scale_cam_image(ours[t], (48, 48)), 0))
        np.testing.assert_allclose(mine, expected, atol=2e-4)


def test_a_group_target_equals_the_mean_of_its_genes_outputs():
    model, images = _model(), _images()
    targets = cam.make_targets(["group:MT", "group:RIBO", "KRT8", "heg50"], GENES, GROUPS,
                               y=np.random.default_rng(1).gamma(2, size=(9, 6)))
    weights = cam.target_weights(targets, len(GENES))
    choice = choose_layer(model.backbone, model.preprocess.size)
    out = _outputs(model, images)
    _, scores = compute_cams(model, images, weights, choice)
    for t, cols in enumerate([[0, 1], [2, 3], [5]]):
        np.testing.assert_allclose(scores[t], out[:, cols].mean(axis=1), atol=1e-6)
    _, original = compute_cams(model, images, weights[:2], choice, scale="original")
    y = out * model.y_std.numpy() + model.y_mean.numpy()
    np.testing.assert_allclose(original[0], y[:, [0, 1]].mean(axis=1), atol=1e-5)


# --- target layer per timm family -------------------------------------------------------------

FAMILIES = [  # name, img_size, expected layer, layout, grid
    ("test_convnext", 64, "stages.3", "nchw", (2, 2)),
    ("test_efficientnet", 64, "bn2", "nchw", (2, 2)),
    ("test_resnet", 64, "layer4.0", "nchw", (2, 2)),
    ("test_vit", 64, "blocks.5.norm1", "tokens", (4, 4)),
    ("test_coatnet", 64, "norm", "nchw", (2, 2)),
    ("test_maxvit", 64, "norm", "nchw", (2, 2)),
    ("test_mambaout", 64, "stages.3", "nhwc", (2, 2)),
    # small siblings of the seed team's coatnet_rmlp_1_rw2_224, xcit_large_24_p16_224 and
    # convnextv2_large, random weights
    ("xcit_nano_12_p16_224", 64, "blocks.11", "tokens", (4, 4)),
    ("coatnet_nano_rw_224", 224, "norm", "nchw", (7, 7)),
    ("convnextv2_atto", 64, "stages.3", "nchw", (2, 2)),
]


@pytest.mark.parametrize("name, size, layer, layout, grid", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_the_target_layer_is_chosen_per_family_and_gets_gradients(name, size, layer, layout,
                                                                     grid):
    from utils.models import create_backbone

    backbone = create_backbone(name, pretrained=False, img_size=size).eval()
    choice = choose_layer(backbone, (size, size))
    assert (choice.name, choice.layout, choice.grid) == (layer, layout, grid)
    with LayerTap(choice.module) as tap:
        features = backbone(torch.rand(2, 3, size, size))
        (features @ torch.randn(features.shape[1])).sum().backward()  # LN heads: sum is flat
    maps = choice.reshape(tap.output)
    assert maps.shape[0] == 2 and tuple(maps.shape[2:]) == grid
    assert tap.output.grad is not None and tap.output.grad.abs().sum() > 0  # reaches the output


def test_class_and_register_tokens_are_dropped_from_the_token_grid():
    backbone = timm.create_model("test_vit", num_classes=0, img_size=64, reg_tokens=3).eval()
    choice = choose_layer(backbone, (64, 64))
    assert choice.reshape.n_prefix == backbone.num_prefix_tokens == 4
    tokens = torch.arange(2 * 20 * 5, dtype=torch.float32).reshape(2, 20, 5)
    maps = choice.reshape(tokens)
    assert maps.shape == (2, 5, 4, 4)
    torch.testing.assert_close(maps[1, :, 0, 1], tokens[1, 4 + 1])  # row 0, column 1 → token 5


def test_layer_and_reshape_can_be_overridden_and_bad_ones_are_named():
    model = _model("test_convnext")
    choice = choose_layer(model.backbone, (64, 64), layer="stages.2")
    assert (choice.name, choice.grid) == ("stages.2", (4, 4))
    vit = _model("test_vit")
    choice = choose_layer(vit.backbone, (64, 64), layer="blocks.3", reshape="tokens:4x4")
    assert choice.reshape.n_prefix == 1 and choice.grid == (4, 4)
    assert parse_reshape("none") == ("nchw", None)
    with pytest.raises(ValueError, match="not a module"):
        choose_layer(model.backbone, (64, 64), layer="stages.9")
    with pytest.raises(ValueError, match="RESHAPE"):
        parse_reshape("tokens:big")
    with pytest.raises(ValueError, match="do not fit"):
        choose_layer(vit.backbone, (64, 64), layer="blocks.3", reshape="tokens:5x5")


# --- targets and units ------------------------------------------------------------------------

def test_targets_by_name():
    y = np.random.default_rng(0).gamma(2, size=(20, 6))
    targets = cam.make_targets(["groups", "gene:ACTB", "RPL3", "hvg50"], GENES, GROUPS, y)
    assert [t.name for t in targets] == ["MT", "RIBO", "ACTB", "RPL3", "hvg50"]  # no "other"
    np.testing.assert_array_equal(targets[-1].genes, np.sort(top_genes(y)["hvg50"]))
    weights = cam.target_weights(targets, 6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="closest names.*ACTB"):
        cam.make_targets(["ACTC"], GENES, GROUPS)
    with pytest.raises(ValueError, match="needs the train targets"):
        cam.make_targets(["heg50"], GENES, GROUPS)


def test_similarity_genes_are_the_most_variable_of_each_named_group():
    y = np.zeros((10, 6))
    y[:, [1, 2, 4]] = np.random.default_rng(0).normal(size=(10, 3))  # 4 is in "other"
    picked = cam.similarity_genes({"s": GROUPS}, y, per_group=1)
    np.testing.assert_array_equal(picked, [1, 2])
    np.testing.assert_array_equal(cam.gene_labels(GROUPS, 6)[picked], ["MT", "RIBO"])


def test_targets_split_over_one_model_per_group():
    units = {"fold0-a": np.array([0, 1, 2]), "fold0-b": np.array([3, 4])}
    weights = np.zeros((2, 6), np.float32)
    weights[0, [1, 3]] = 0.5
    weights[1, 4] = 1.0
    parts = cam.split_targets(weights, units)
    np.testing.assert_allclose(parts["fold0-a"][1], [0.5, 0.0])
    np.testing.assert_allclose(parts["fold0-a"][0][0], [0, 1, 0])
    np.testing.assert_allclose(parts["fold0-b"][0], [[1, 0], [0, 1]])
    weights[1] = 0
    weights[1, 5] = 1.0  # gene 5: no model of the fold predicts it
    with pytest.raises(ValueError, match=r"targets \[1\]"):
        cam.split_targets(weights, units)


def _write_run(folder, units: dict[str, dict]):
    """A fine-tuning run folder: model.json and weights of random-init test models."""
    entries = {}
    for i, (name, heads) in enumerate(units.items()):
        genes = sorted(c for cols in heads.values() for c in cols)
        model = _model(genes=genes, heads={h: [genes.index(c) for c in cols]
                                           for h, cols in heads.items()}, seed=i)
        save_weights(model, folder / f"weights/{name}.safetensors")
        entries[name] = {"fold": 0, "group": None, "spec": model.spec.to_dict(),
                         "weights": f"weights/{name}.safetensors"}
    (folder / "model.json").write_text(json.dumps({"backbone": "test_convnext", "img_size": 64,
                                                   "group_mode": "heads", "genes": GENES,
                                                   "units": entries}))
    return folder


def test_explain_run_with_one_model_per_group_combines_the_parts(tmp_path):
    from utils.models import load_unit_model

    run = _write_run(tmp_path, {"fold0-a": {"a": [0, 1, 2]}, "fold0-b": {"b": [3, 4, 5]}})
    images = _images()
    targets = cam.make_targets(["group:MT", "MT-CO1", "group:RIBO"], GENES, GROUPS)
    result = explain_run(run, 0, images, cam.target_weights(targets, 6), device="cpu")
    out_a = _outputs(load_unit_model(run, "fold0-a"), images)
    out_b = _outputs(load_unit_model(run, "fold0-b"), images)
    np.testing.assert_allclose(result["scores"][0], out_a[:, [0, 1]].mean(1), atol=1e-6)
    np.testing.assert_allclose(result["scores"][2], (out_a[:, 2] + out_b[:, 0]) / 2, atol=1e-6)
    assert result["maps"].shape == (3, 5, 2, 2) and np.isfinite(result["maps"]).all()
    assert set(result["layers"]) == {"fold0-a", "fold0-b"}
    with pytest.raises(ValueError, match="folds: \\[0\\]"):
        explain_run(run, 1, images, cam.target_weights(targets, 6))


def test_a_run_whose_models_read_two_crops_is_refused_by_name(tmp_path):
    """FEATURE_CROPS=[1.0, 0.5]: two forward passes per patch, one Grad-CAM tap: refused."""
    model = build_model(ModelSpec("test_convnext", 64, list(range(6)), {"a": list(range(6))},
                                  crops=[1.0, 0.5])).eval()
    save_weights(model, tmp_path / "weights/fold0.safetensors")
    entry = {"fold": 0, "group": None, "spec": model.spec.to_dict(),
             "weights": "weights/fold0.safetensors"}
    (tmp_path / "model.json").write_text(json.dumps({"backbone": "test_convnext", "img_size": 64,
                                                     "group_mode": "heads", "genes": GENES,
                                                     "units": {"fold0": entry}}))
    targets = cam.make_targets(["MT-CO1"], GENES, GROUPS)
    with pytest.raises(ValueError, match=r"FEATURE_CROPS=\[1.0, 0.5\].*FEATURE_CROPS=\[1.0\]"):
        explain_run(tmp_path, 0, _images(), cam.target_weights(targets, 6), device="cpu")


def test_a_ridge_run_has_nothing_to_explain(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"recipe": "ridge"}))
    with pytest.raises(ValueError, match="RECIPE='ridge' run.*finetune"):
        read_model_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        read_model_info(tmp_path / "nothing")


# --- similarity -------------------------------------------------------------------------------

def test_within_and_between_similarity_on_a_known_case():
    rng = np.random.default_rng(0)
    p1, p2 = rng.random((2, 4, 5, 5))  # two patterns per patch, 4 patches
    scale = rng.uniform(0.5, 2, 7)[:, None, None, None]
    maps = np.concatenate([p1[None] * scale[:3] + 1, p2[None] * scale[3:6],
                           rng.random((1, 4, 5, 5))])
    labels = np.array(["A", "A", "A", "B", "B", "B", "other"])
    sim = cam.map_similarity(maps)
    expected_between = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(p1, p2)])
    result = within_between(sim, labels, n_permutations=400, seed=0)
    assert result["within"] == pytest.approx(1.0)
    assert result["between"] == pytest.approx(expected_between)
    assert (result["genes"], result["groups"], result["within_pairs"]) == (6, 2, 6)
    assert 0.05 < result["p_value"] < 0.2  # 2 of the 20 ways to split 6 genes into 3 + 3
    by_group = cam.similarity_by_group(sim, labels)
    np.testing.assert_allclose(by_group["within"], [1.0, 1.0])
    np.testing.assert_allclose(by_group["between"], [expected_between] * 2)
    table = cam.similarity_table(sim, {"good": labels, "bad": labels[[0, 3, 1, 4, 2, 5, 6]]})
    assert table.loc["good", "contrast"] > 0.5 > table.loc["bad", "contrast"]


def test_flat_maps_do_not_count_as_similar_or_dissimilar():
    maps = np.random.default_rng(0).random((3, 2, 4, 4))
    maps[2, 0] = 0.0  # a map without any gradient signal on patch 0
    sim = cam.map_similarity(maps)
    direct = np.corrcoef(maps[0, 1].ravel(), maps[2, 1].ravel())[0, 1]
    assert sim[0, 2] == pytest.approx(direct)  # only patch 1 counts
    np.testing.assert_allclose(np.diag(sim), 1.0)


# --- config and files -------------------------------------------------------------------------

def test_config_names_bad_parameters_and_shrinks_for_smoke():
    cfg = CamConfig(method="gradcamplusplus", targets="heg50", smoke=True)
    assert cfg.method == "GradCAM++" and cfg.targets == ("heg50",)
    assert (cfg.n_patches, cfg.genes_per_group, cfg.n_show) == (4, 2, 2)
    with pytest.raises(ValueError, match="unknown CAM method"):
        CamConfig(method="ScoreCAMX")
    with pytest.raises(ValueError, match="PATCHES"):
        CamConfig(patches="train")
    with pytest.raises(ValueError, match="N_PATCHES"):
        CamConfig(n_patches=0)


def test_patches_are_held_out_rows_of_the_fold_or_test_patches():
    folds = np.repeat([0, 1, 2], 10)
    rows = cam.choose_patches("val", folds, 1, n_test=7, n=4, seed=0)
    assert len(rows) == 4 and (folds[rows] == 1).all() and (np.diff(rows) > 0).all()
    assert len(cam.choose_patches("test", folds, 1, n_test=7, n=20)) == 7


def test_cams_file_roundtrip(tmp_path):
    targets = cam.make_targets(["MT-CO1", "group:MT"], GENES, GROUPS)
    maps = np.random.default_rng(0).random((2, 3, 4, 4))
    cam.write_cams(tmp_path / "cams.npz", maps, maps.mean(axis=(2, 3)), targets, ["a", "b", "c"])
    saved = np.load(tmp_path / "cams.npz")
    np.testing.assert_allclose(saved["maps"], maps.astype(np.float32))
    assert saved["targets"].tolist() == ["MT-CO1", "MT"] and saved["kinds"][1] == "group"


# --- the notebook -----------------------------------------------------------------------------

@pytest.mark.smoke
def test_gradcam_notebook_wrote_cams_figures_and_the_similarity_table(demo_pipeline):
    out = demo_pipeline["runs"] / "finetune" / "gradcam"
    for name in ("config.json", "cams.npz", "targets.csv", "similarity.csv",
                 "similarity_by_group.csv", "cam_grid.png", "group_average.png",
                 "similarity.png"):
        assert (out / name).is_file(), name
    saved = np.load(out / "cams.npz")
    maps = saved["maps"]
    assert maps.ndim == 4 and maps.shape[1] == len(saved["patch_ids"]) == 4  # SMOKE: 4 patches
    assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1 + 1e-6
    assert {"heg50", "hvg50"} <= set(saved["targets"]) and "group" in set(saved["kinds"])
    table = pd.read_csv(out / "similarity.csv", index_col="strategy")
    assert set(table.index) == {"kmeans", "prefix", "correlation"}
    assert np.isfinite(table[["within", "between"]].to_numpy()).all()
    assert ((table["p_value"] > 0) & (table["p_value"] <= 1)).all()
    assert json.loads((out / "config.json").read_text())["n_patches"] == 4  # QUICK settings
