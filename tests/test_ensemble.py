"""Blending runs on OOF predictions (nested CV), post-processing, the audit, the 07 notebook."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import blind_cv_score

from utils import ensemble, submit
from utils.config import SubmitConfig, from_params
from utils.cv import score_folds
from utils.data import load_data
from utils.genes import load_gene_groups
from utils.metric import pearson_genes, score, top_genes
from utils.runs import check_folds, load_run, save_run, select_runs
from utils.submit import make_submission, validate_submission, write_submission

N, G, N_TEST = 160, 60, 20
SHRINKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _truth(seed=0, n=N, g=G):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 1.0, (n, g)) * rng.uniform(0.5, 3.0, g), np.arange(n) * 4 // n


def _good_and_noise(y, seed=1):
    """Run 0: the truth plus small noise; run 1: noise with the truth's per-gene mean and sd."""
    rng = np.random.default_rng(seed)
    good = y + rng.normal(0, 0.1, y.shape) * y.std(axis=0)
    noise = rng.normal(y.mean(axis=0), y.std(axis=0), y.shape)
    return np.stack([good, noise]).astype(np.float32)


def _blend(y, oof, folds, mode, groups=None, genes=None):
    genes = genes or [f"g{i}" for i in range(y.shape[1])]
    unit, units = ensemble.weight_sets(mode, genes, groups)
    test = oof[:, :N_TEST]
    return ensemble.cv_blend(y, oof, test, folds, mode, unit, units, SHRINKS, "blocks")


def test_simplex_grid_is_on_the_simplex_and_small():
    for n_runs in (1, 2, 3, 5, 12):
        grid = ensemble.simplex_grid(n_runs)
        assert grid.shape[1] == n_runs and len(grid) <= ensemble.MAX_GRID
        assert (grid >= 0).all() and np.allclose(grid.sum(axis=1), 1)
        assert len(np.unique(grid.round(9), axis=0)) == len(grid)
        for vertex in np.eye(n_runs):  # every run alone is a candidate
            assert np.isclose(grid, vertex).all(axis=1).any()
    assert len(ensemble.simplex_grid(2)) == 101


def test_closed_form_grid_scores_equal_the_metric():
    y, _ = _truth()
    rng = np.random.default_rng(3)
    preds = np.stack([y + rng.normal(0, s, y.shape) for s in (0.5, 1.0, 3.0)])
    preds[1][:, 4] = 2.0  # a constant column counts as r = 0
    grid = ensemble.simplex_grid(3)
    parts = ensemble.score_grid(y, preds, grid)
    for i in (0, 17, 100, len(grid) - 1):
        expected = score(y, np.tensordot(grid[i], preds, axes=1))
        for key, value in expected.items():
            assert parts[key][i] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("mode", ["global", "group", "gene"])
def test_fitted_weights_pick_the_truth_over_noise(mode, tmp_path):
    y, folds = _truth()
    oof = _good_and_noise(y)
    genes = [f"g{i}" for i in range(G)]
    groups = None
    if mode == "group":
        path = tmp_path / "gene_groups.csv"
        pd.DataFrame({"gene": genes, "group": [f"m{i % 3}" for i in range(G)],
                      "strategy": "s"}).to_csv(path, index=False)
        groups = load_gene_groups(path, genes, "s")
    result = _blend(y, oof, folds, mode, groups, genes)
    assert result.weights.shape == (2, {"global": 1, "group": 3, "gene": G}[mode])
    assert (result.weights[0] > 0.8).all(), result.weights
    assert np.allclose(result.weights.sum(axis=0), 1) and (result.weights >= 0).all()
    alone = score_folds(y, oof[0], folds, "blocks")["overall"]["score"]
    assert result.cv["overall"]["score"] > alone - 0.01
    assert result.cv["splitter"] == "blocks" and result.cv["n_folds"] == 4


def test_mean_blend_is_the_plain_average():
    y, folds = _truth()
    oof = _good_and_noise(y)
    result = _blend(y, oof, folds, "mean")
    assert np.allclose(result.weights, 0.5)
    np.testing.assert_allclose(result.oof, oof.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(result.test_pred, oof[:, :N_TEST].mean(axis=0), rtol=1e-5)
    assert _blend(y, oof, folds // 2, "mean").cv["n_folds"] == 2  # nothing chosen: 2 folds do


def test_shrink_moves_weights_towards_equal():
    weights = np.array([[1.0, 0.2], [0.0, 0.8]])
    np.testing.assert_allclose(ensemble.shrink_weights(weights, 0.5), [[0.75, 0.35],
                                                                         [0.25, 0.65]])
    np.testing.assert_allclose(ensemble.shrink_weights(weights, 1.0), 0.5)


@pytest.mark.parametrize("mode", ["global", "gene"])
def test_nested_score_never_uses_weights_fitted_on_the_scored_fold(mode):
    """Run A is the truth on fold 0 only, run B the truth everywhere else. Weights fitted with
    fold 0 would put A on fold 0 and score it near 1; fitted without it they choose B there."""
    y, folds = _truth()
    rng = np.random.default_rng(5)
    noise = rng.normal(y.mean(axis=0), y.std(axis=0), y.shape)
    a = np.where((folds == 0)[:, None], y, noise)
    b = np.where((folds == 0)[:, None], noise, y)
    result = _blend(y, np.stack([a, b]).astype(np.float32), folds, mode)
    assert all(k not in fitted for k, fitted in enumerate(result.fitted_on))
    assert result.fitted_on[0] == [1, 2, 3]
    fold0 = result.cv["folds"][0]
    assert fold0["hvg50"] < 0.3 and fold0["heg50"] < 0.3, fold0  # B's noise on fold 0
    assert min(f["hvg50"] for f in result.cv["folds"][1:]) > 0.5  # fits there include B's folds
    assert result.weights[1].min() > 0.5  # all folds together: B wins 3 folds to 1


def test_nested_choice_scores_each_outer_fold_with_fits_that_exclude_it():
    folds = np.repeat(np.arange(4), 5)
    calls = []

    def held_out_scores(fit_folds, k):
        calls.append((tuple(fit_folds), k))
        assert k not in fit_folds
        return np.array([0.0, 1.0])

    choices, curve = ensemble.nested_choice(folds, held_out_scores, 2)
    assert choices == [1, 1, 1, 1] and curve.tolist() == [0.0, 1.0]
    assert ((1, 2, 3), 0) in calls and ((2, 3), 1) in calls and len(calls) == 4 * 3 + 4
    calls.clear()  # 2 folds: each outer fold chooses on the other fold alone
    choices, _ = ensemble.nested_choice(np.repeat([0, 1], 5), lambda f, k: (
        calls.append((tuple(f), k)) or np.array([k, 1 - k])), 2)
    assert choices == [0, 1]  # fold 0 takes what fold 1 prefers, and vice versa
    assert calls == [((1,), 1), ((1,), 0), ((0,), 0), ((0,), 1)]  # choice, then outer curve
    calls.clear()  # one candidate: nothing to choose, two folds suffice
    assert ensemble.nested_choice(np.repeat([0, 1], 5), held_out_scores, 1)[0] == [0, 0]
    assert calls == [((1,), 0), ((0,), 1)]


def test_comparison_rows_and_seed_weights():
    y, folds = _truth()
    oof = np.concatenate([_good_and_noise(y), _good_and_noise(y, seed=2)[:1]])
    cvs = ensemble.comparison_cvs(y, oof, folds, ["a", "b", "c"], "blocks")
    assert list(cvs) == ["a", "b", "c", "mean", "seed 0.6/0.2/0.2"]
    expected = score_folds(y, 0.6 * oof[0] + 0.2 * oof[1] + 0.2 * oof[2], folds, "blocks")
    assert cvs["seed 0.6/0.2/0.2"]["overall"]["score"] == pytest.approx(
        expected["overall"]["score"], abs=1e-6)
    assert "seed 0.6/0.2/0.2" not in ensemble.comparison_cvs(y, oof[:2], folds, ["a", "b"],
                                                             "blocks")
    table = ensemble.cv_table(cvs)
    assert {"score", "cells", "max_gene", "heg50", "hvg50", "oof_score", "splitter"} <= set(table)


def test_group_units_need_every_gene():
    genes = ["a", "b", "c"]
    unit, units = ensemble.weight_sets("group", genes, {"x": np.array([0, 2]), "y": np.array([1])})
    assert unit.tolist() == [0, 1, 0] and units == ["x", "y"]
    with pytest.raises(ValueError, match="in no group"):
        ensemble.weight_sets("group", genes, {"x": np.array([0, 2])})
    with pytest.raises(ValueError, match="unknown"):
        ensemble.weight_sets("stack", genes)


def _save(folder, y, oof, folds, test):
    cv = score_folds(y, oof, folds, "blocks")
    return save_run(folder, {"recipe": "ridge", "backbone": "m"}, folds, oof, test, cv)


def test_mismatched_folds_are_refused_naming_the_runs(tmp_path):
    y, folds = _truth()
    oof = _good_and_noise(y)
    shuffled = np.random.default_rng(0).permutation(folds)
    runs = [load_run(_save(tmp_path / name, y, oof[0], f, oof[0, :N_TEST]))
            for name, f in (("blocks_a", folds), ("blocks_b", 3 - folds),
                            ("random_c", shuffled))]
    check_folds(runs[:2])  # the same split with other fold numbers is the same split
    with pytest.raises(ValueError, match="2 different splits") as err:
        check_folds(runs)
    assert "split 1: blocks_a" in str(err.value) and "split 2: random_c" in str(err.value)


def test_select_runs_lists_or_discovers(tmp_path):
    y, folds = _truth()
    for name in ("r1", "r2"):
        _save(tmp_path / "root" / name, y, y, folds, y[:N_TEST])
    assert select_runs([str(tmp_path / "root" / "r1")], tmp_path)[0].name == "r1"
    assert select_runs(["runs/r2"], tmp_path / "root")[0] == tmp_path / "root" / "r2"  # by name
    assert [p.name for p in select_runs(None, tmp_path / "root")] == ["r1", "r2"]
    with pytest.raises(FileNotFoundError, match="RUNS_ROOT"):
        select_runs([], tmp_path / "empty")


def test_postprocess_shrink_keeps_gene_r_and_clip_keeps_the_train_range():
    y, _ = _truth()
    rng = np.random.default_rng(2)
    pred = y + rng.normal(0, 3, y.shape)
    params = ensemble.fit_postprocess(y, pred)
    assert ((params["slope"] >= ensemble.MIN_SLOPE) & (params["slope"] <= 1)).all()
    shrunk = ensemble.apply_postprocess(pred, params, ["shrink_to_mean"])
    np.testing.assert_allclose(pearson_genes(y, shrunk), pearson_genes(y, pred), atol=1e-5)
    assert np.abs(shrunk - y.mean(axis=0)).mean() < np.abs(pred - y.mean(axis=0)).mean()
    clipped = ensemble.apply_postprocess(pred, params, ["clip"])
    assert (clipped >= params["low"] - 1e-5).all() and (clipped <= params["high"] + 1e-5).all()
    pred[:, 0] = params["high"][0] + np.arange(len(pred))  # clipping would flatten column 0
    assert np.ptp(ensemble.apply_postprocess(pred, params, ["clip"])[:, 0]) > 0
    with pytest.raises(ValueError, match="unknown steps"):
        ensemble.step_candidates(["smooth"])


def test_postprocess_stats_of_folds_add_up():
    y, folds = _truth()
    pred = y + np.random.default_rng(1).normal(0, 1, y.shape)
    parts = [ensemble.postprocess_stats(y[folds == k], pred[folds == k]) for k in range(4)]
    pooled = ensemble.fit_postprocess(stats=ensemble.combine_stats(parts))
    for key, value in ensemble.fit_postprocess(y, pred).items():
        np.testing.assert_allclose(pooled[key], value, rtol=1e-9, atol=1e-12)


def test_postprocess_is_applied_only_when_it_helps():
    y, folds = _truth()
    rng = np.random.default_rng(4)
    noisy = (y + rng.normal(0, 2, y.shape) * y.std(axis=0)).astype(np.float32)
    baseline = score_folds(y, noisy, folds, "blocks")
    post = ensemble.cv_postprocess(y, noisy, noisy[:N_TEST], folds,
                                      ["shrink_to_mean", "clip"], baseline)
    assert post.gain > 0 and "shrink_to_mean" in post.steps, post.curve
    assert not np.allclose(post.test_pred, noisy[:N_TEST])
    exact = y.astype(np.float32)  # nothing to gain from shrinking a perfect prediction
    test = exact[:N_TEST]
    post = ensemble.cv_postprocess(y, exact, test, folds, ["shrink_to_mean"],
                                      score_folds(y, exact, folds, "blocks"))
    assert post.steps == () and post.gain <= 0 and post.test_pred is test


def test_audit_flags_flat_and_shifted_columns():
    y, _ = _truth()
    oof = y.copy()
    test = y[:N_TEST].copy()
    test[:, 0] = 1.0
    test[:, 1] += 5 * y[:, 1].std()
    table = submit.audit_predictions(y, oof, test, [f"g{i}" for i in range(G)])
    flags = submit.audit_flags(table)
    assert flags["near_constant_predictions"] == ["g0"]
    assert "g1" in flags["test_shift_over_1_sd"] and flags["constant_in_train"] == []
    top = top_genes(y)
    assert set(np.flatnonzero(table["scored"])) == set(top["heg50"]) | set(top["hvg50"])
    summary = submit.summarize_audit(table)
    assert "train_sd" in summary.index and summary.shape[1] == 6


def test_figures_are_returned():
    import matplotlib

    matplotlib.use("Agg")
    y, _ = _truth()
    table = submit.audit_predictions(y, y, y[:N_TEST], [f"g{i}" for i in range(G)])
    for fig in (submit.plot_audit(table), submit.plot_prediction_pca(y, y[:N_TEST]),
                ensemble.plot_weights(pd.DataFrame({"a": [0.7], "b": [0.3]})),
                ensemble.plot_weights(pd.DataFrame(np.full((40, 2), 0.5), columns=["a", "b"],
                                                   index=pd.Index(range(40), name="gene")))):
        assert fig.axes


def test_submission_from_a_blend_is_written_and_valid(tmp_path):
    y, folds = _truth()
    oof = _good_and_noise(y)
    result = _blend(y, oof, folds, "gene")
    ids = [f"TEST_{i:04d}" for i in range(N_TEST)]
    genes = [f"g{i}" for i in range(G)]
    sample = pd.DataFrame(0.0, index=range(N_TEST), columns=genes)
    sample.insert(0, "ID", ids[::-1])  # the sample's row order wins
    frame = make_submission(result.test_pred, ids, sample)
    path = write_submission(frame, sample, tmp_path / "sub.csv")
    validate_submission(pd.read_csv(path, dtype={"ID": str}), sample)


def test_submit_config_parameters():
    assert from_params(SubmitConfig, {"RUNS": None}).runs == ()
    cfg = from_params(SubmitConfig, {"RUNS": "runs/a", "SHRINK": 0.5, "POSTPROCESS": []})
    assert cfg.runs == ("runs/a",) and cfg.shrink == (0.5,) and cfg.postprocess == ()
    for params, message in (({"BLEND": "stack"}, "BLEND='stack' is unknown"),
                            ({"BLEND": "group", "GENE_GROUPS": None}, "GENE_GROUPS"),
                            ({"SHRINK": [1.5]}, "SHRINK"),
                            ({"POSTPROCESS": ["smooth"]}, "POSTPROCESS")):
        with pytest.raises(ValueError, match=message):
            from_params(SubmitConfig, params)


@pytest.mark.smoke
def test_demo_submission_has_a_blend_report(demo_pipeline):
    """07 found every run 05 wrote under the runs root and blended them."""
    from utils.runs import find_runs

    report = json.loads(submit.report_path(demo_pipeline["submission"]).read_text())
    found = find_runs(demo_pipeline["runs"])
    assert [run["path"] for run in report["runs"]] == [str(p) for p in found] and found
    assert report["blend"]["mode"] == "global"
    assert np.allclose(np.sum(list(report["blend"]["weights"].values()), axis=0), 1)
    assert {"mean", "blend global (nested)", *(p.name for p in found)} <= set(report["scores"])
    n_slices = pd.read_csv(demo_pipeline["data"] / "demo_slices.csv")["slice"].nunique()
    for cv in report["scores"].values():
        assert cv["splitter"] == "slices" and cv["n_folds"] == n_slices
        assert np.isfinite(list(cv["overall"].values())).all()
    data = load_data(demo_pipeline["data"])
    assert report["data_fingerprint"] == data.fingerprint  # what the submission was made from
    y = data.y
    blind = blind_cv_score(y, load_run(found[0]).folds)  # image-blind: mean profile + noise
    assert report["scores"]["blend global (nested)"]["overall"]["score"] > blind + 0.05


@pytest.mark.smoke
def test_notebook_blends_per_gene_and_prefers_the_better_run(demo_pipeline, tmp_path):
    from utils.data import load_data
    from utils.dev.pipeline import execute_notebook, list_notebooks

    ridge = load_run(demo_pipeline["runs"] / "ridge")
    rng = np.random.default_rng(0)
    spread = ridge.oof.std(axis=0)
    oof = ridge.oof + rng.normal(0, 3, ridge.oof.shape) * spread
    y = load_data(demo_pipeline["data"]).y
    noisy = save_run(tmp_path / "runs" / "noisy", {"recipe": "noise", "backbone": "none",
                                                   "data_fingerprint":
                                                   ridge.config["data_fingerprint"]},
                     ridge.folds, oof,
                     ridge.test_pred + rng.normal(0, 3, ridge.test_pred.shape) * spread,
                     score_folds(y, oof, ridge.folds, "blocks"))
    submission = tmp_path / "gene.csv"
    notebook = next(p for p in list_notebooks() if p.stem == "07_ensemble_submit")
    executed = execute_notebook(notebook, {"DATA_DIR": str(demo_pipeline["data"]),
                                           "RUNS": [str(ridge.path), str(noisy)],
                                           "SUBMISSION": str(submission), "BLEND": "gene"},
                                tmp_path / "07.ipynb")
    assert executed.is_file()
    sample = pd.read_csv(demo_pipeline["data"] / "sample_submission.csv", dtype={"ID": str})
    validate_submission(pd.read_csv(submission, dtype={"ID": str}), sample)
    report = json.loads(submit.report_path(submission).read_text())
    weights = report["blend"]["weights"]
    assert len(weights["ridge"]) == sample.shape[1] - 1
    assert np.mean(weights["ridge"]) > np.mean(weights["noisy"])
    scores = report["scores"]
    assert scores["blend gene (nested)"]["overall"]["score"] > scores["noisy"]["overall"]["score"]


def test_a_blend_worse_than_its_best_member_is_not_submitted(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 1.0, size=(90, 20))
    folds = np.repeat(np.arange(3), 30)
    good = y + 0.3 * rng.normal(size=y.shape)
    runs = [load_run(save_run(tmp_path / name, {"recipe": "ridge"}, folds, oof, oof[:5],
                              score_folds(y, oof, folds, "blocks")))
            for name, oof in (("good", good), ("noise", rng.normal(size=y.shape)))]
    bad_blend = SimpleNamespace(mode="global", oof=0.5 * good + 0.5 * rng.normal(size=y.shape))
    post = SimpleNamespace(steps=(), oof=bad_blend.oof, test_pred=np.zeros((5, 20)), inner_oof={})
    final = ensemble.keep_best(y, folds, "blocks", bad_blend, post, runs)
    assert final["kept"] == "good" and "does not beat its best member" in final["note"]
    assert final["fold_choices"] == ["good"] * 3
    np.testing.assert_array_equal(final["test_pred"], runs[0].test_pred)
    assert final["cv"]["overall"]["score"] == pytest.approx(runs[0].cv["overall"]["score"])
    # a blend that is better than every member is what gets submitted
    better = SimpleNamespace(mode="global", oof=y + 0.1 * rng.normal(size=y.shape))
    post = SimpleNamespace(steps=(), oof=better.oof, test_pred=np.zeros((5, 20)), inner_oof={})
    assert ensemble.keep_best(y, folds, "blocks", better, post, runs)["kept"] == "blend global"


def _07_oof(y, oof, folds, mode="global", steps=("shrink_to_mean", "clip"), runs=None,
            fold_sets=None, sets=None):
    """07's chain on fixed run OOF predictions: blend → post-processing → keep the blend or a
    member; returns the submitted OOF predictions (what 07's CV scores)."""
    from types import SimpleNamespace

    genes = [f"g{i}" for i in range(y.shape[1])]
    set_of_gene, names = sets or ensemble.weight_sets(mode, genes)
    blended = ensemble.cv_blend(y, oof, oof[:, :N_TEST], folds, mode, set_of_gene, names,
                                SHRINKS, "blocks", fold_sets)
    post = ensemble.cv_postprocess(y, blended.oof, blended.test_pred, folds, steps, blended.cv,
                                   inner_oof=blended.inner_oof)
    runs = runs or [SimpleNamespace(name=f"run{i}", path=None, oof=o, test_pred=o[:N_TEST])
                    for i, o in enumerate(oof)]
    return ensemble.keep_best(y, folds, "blocks", blended, post, runs)["oof"]


def _three_runs(y, seed=2):
    rng = np.random.default_rng(seed)
    spread = y.std(axis=0)
    return np.stack([y + rng.normal(0, s, y.shape) * spread for s in (0.6, 0.9, 1.5)]
                    ).astype(np.float32)


@pytest.mark.parametrize("n_folds", [2, 3, 4])
@pytest.mark.parametrize("mode", ["global", "gene"])
def test_07_blend_and_postprocessing_of_a_fold_ignore_its_labels(n_folds, mode):
    """07's blend, post-processing (whether and how) and blend-or-member choice: fold k's
    submitted OOF predictions do not move when fold k's labels are replaced."""
    from conftest import assert_label_invariant

    y, _ = _truth()
    folds = np.arange(len(y)) * n_folds // len(y)
    oof = _three_runs(y)
    assert_label_invariant(lambda t: _07_oof(t, oof, folds, mode), y, folds)


def test_07_with_groups_made_per_fold_ignores_each_folds_labels(tmp_path):
    """BLEND="group" with a strategy that reads the targets: the groups of fold k are made
    without fold k (blend_sets), and the whole chain stays label-blind for fold k."""
    from conftest import assert_label_invariant

    from utils.config import GeneClusteringConfig
    from utils.files import write_json
    from utils.genes import grouping_settings

    y, folds = _truth()
    genes = [f"g{i}" for i in range(G)]
    pd.DataFrame({"gene": genes, "group": [f"m{i % 3}" for i in range(G)],
                  "strategy": "correlation"}).to_csv(tmp_path / "gene_groups.csv", index=False)
    write_json(tmp_path / "gene_groups.json", grouping_settings(GeneClusteringConfig(
        strategies=["correlation"], n_modules=3, min_group_size=2)))
    oof = _three_runs(y)

    def submitted(t):
        set_of_gene, names, fold_sets = ensemble.blend_sets(
            "group", genes, t, folds, str(tmp_path / "gene_groups.csv"), "correlation")
        assert fold_sets is not None
        return _07_oof(t, oof, folds, "group", fold_sets=fold_sets, sets=(set_of_gene, names))

    assert_label_invariant(submitted, y, folds, check_folds=[0, 2])


def test_postprocessing_decided_on_all_folds_is_caught():
    """The leak 07 had: post-processed OOF rows only if the gain over *all* folds (the scored
    one included) is positive. The helper catches it; the per-fold decision passes."""
    from conftest import assert_label_invariant

    rng = np.random.default_rng(3)
    y = rng.gamma(2.0, 1.0, (120, 30)) * rng.uniform(0.5, 3.0, 30)
    folds = np.repeat(np.arange(3), 40)
    pred = (y.mean(axis=0) + 0.9 * (y - y.mean(axis=0))
            + rng.normal(0, 0.8, y.shape) * y.std(axis=0)).astype(np.float32)  # gain ≈ +0.002

    def leaky(t):
        post = ensemble.cv_postprocess(t, pred, pred[:5], folds, ["shrink_to_mean"],
                                       score_folds(t, pred, folds, "blocks"))
        return post.oof if post.steps else pred

    def honest(t):
        return ensemble.cv_postprocess(t, pred, pred[:5], folds, ["shrink_to_mean"],
                                       score_folds(t, pred, folds, "blocks")).oof

    for how in ("noise", "other"):
        with pytest.raises(AssertionError, match="its own labels"):
            assert_label_invariant(leaky, y, folds, how=how, expect_change=False)
        assert_label_invariant(honest, y, folds, how=how)
