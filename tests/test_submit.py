"""utils.ensemble, the submission file: building, validating and atomically writing a submission."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.submit import (
    ConstantColumnsWarning,
    SubmissionError,
    make_submission,
    validate_submission,
    write_submission,
)

GENES = ["G1", "G2", "G3", "MT-CO1"]


@pytest.fixture
def sample() -> pd.DataFrame:
    """A sample submission whose ID order differs from test.csv's."""
    frame = pd.DataFrame(0.0, index=range(5), columns=GENES)
    frame.insert(0, "ID", [f"TEST_{i:04d}" for i in (3, 0, 4, 1, 2)])
    return frame


@pytest.fixture
def test_ids() -> list[str]:
    return [f"TEST_{i:04d}" for i in range(5)]


@pytest.fixture
def pred() -> np.ndarray:
    return np.random.default_rng(0).gamma(2.0, 1.0, size=(5, len(GENES)))


@pytest.fixture
def good(pred, test_ids, sample) -> pd.DataFrame:
    return make_submission(pred, test_ids, sample)


def test_make_submission_reorders_rows_and_keeps_columns(pred, test_ids, sample):
    frame = make_submission(pred, test_ids, sample)
    assert list(frame.columns) == list(sample.columns)
    assert frame["ID"].tolist() == sample["ID"].tolist()
    order = [test_ids.index(i) for i in sample["ID"]]
    np.testing.assert_array_equal(frame[GENES].to_numpy(), pred[order])
    assert frame.index.tolist() == list(range(5))
    validate_submission(frame, sample)


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (5, 5), (20,)])
def test_make_submission_wrong_shape(shape, test_ids, sample):
    with pytest.raises(SubmissionError, match="shape"):
        make_submission(np.ones(shape), test_ids, sample)


def test_make_submission_missing_ids(pred, test_ids, sample):
    ids = [*test_ids[:4], "TEST_9999"]
    with pytest.raises(SubmissionError, match="TEST_0004"):
        make_submission(pred, ids, sample)


def _error(frame: pd.DataFrame, sample: pd.DataFrame, strict: bool = False) -> str:
    with pytest.raises(SubmissionError) as err:
        validate_submission(frame, sample, strict=strict)
    return str(err.value)


def test_validate_missing_column(good, sample):
    msg = _error(good.drop(columns="G2"), sample)
    assert "1 missing ['G2']" in msg and "0 extra" in msg


def test_validate_extra_column(good, sample):
    msg = _error(good.assign(G9=good["G1"]), sample)
    assert "0 missing" in msg and "1 extra ['G9']" in msg


def test_validate_same_columns_other_order(good, sample):
    msg = _error(good[["ID", "G2", "G1", "G3", "MT-CO1"]], sample)
    assert "different order" in msg


def test_validate_wrong_row_count(good, sample):
    assert "4 rows" in _error(good.iloc[:4], sample)
    assert "6 rows" in _error(pd.concat([good, good.iloc[:1]], ignore_index=True), sample)


def test_validate_wrong_id_order(good, sample):
    swapped = good.iloc[[1, 0, 2, 3, 4]].reset_index(drop=True)
    assert "same order" in _error(swapped, sample)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_non_finite_names_ids_and_genes(good, sample, bad):
    frame = good.copy()
    frame.loc[1, "G3"] = bad
    frame.loc[3, "MT-CO1"] = bad
    msg = _error(frame, sample)
    assert sample["ID"][1] in msg and sample["ID"][3] in msg
    assert "'G3'" in msg and "'MT-CO1'" in msg and "'G1'" not in msg
    assert sample["ID"][0] not in msg


def test_validate_constant_column_warns_naming_gene_and_cost(good, sample):
    frame = good.assign(G2=0.25)
    with pytest.warns(ConstantColumnsWarning) as record:
        assert validate_submission(frame, sample) == ["G2"]
    msg = str(record[0].message)
    assert len(record) == 1 and "1 of 4 gene columns" in msg and "'G2'" in msg
    assert "r = 0" in msg and "'G1'" not in msg


def test_validate_constant_column_strict_refuses(good, sample):
    msg = _error(good.assign(G2=0.25), sample, strict=True)
    assert "constant" in msg and "'G2'" in msg and "STRICT" in msg and "'G1'" not in msg


def test_validate_good_frame_no_warning(good, sample, recwarn):
    assert validate_submission(good, sample, strict=True) == []
    assert len(recwarn) == 0


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_submission_round_trip(good, sample, tmp_path):
    path = write_submission(good, sample, tmp_path / "sub" / "submission.csv")
    assert path == tmp_path / "sub" / "submission.csv"
    assert _files(tmp_path / "sub") == ["submission.csv"]
    back = pd.read_csv(path, dtype={"ID": str})
    assert list(back.columns) == list(sample.columns)
    assert back["ID"].tolist() == sample["ID"].tolist()
    np.testing.assert_allclose(back[GENES].to_numpy(), good[GENES].to_numpy(), rtol=1e-6)


def test_write_submission_failing_validation_creates_nothing(good, sample, tmp_path):
    with pytest.raises(SubmissionError):
        write_submission(good.assign(G1=np.nan), sample, tmp_path / "submission.csv")
    assert _files(tmp_path) == []


def test_write_submission_keeps_existing_good_file(good, sample, tmp_path):
    path = write_submission(good, sample, tmp_path / "submission.csv")
    before = path.read_bytes()
    for bad in (good.assign(G3=np.inf), good.iloc[:3]):
        with pytest.raises(SubmissionError):
            write_submission(bad, sample, path)
    with pytest.raises(SubmissionError, match="'G3'"):
        write_submission(good.assign(G3=1.0), sample, path, strict=True)
    assert path.read_bytes() == before and _files(tmp_path) == ["submission.csv"]


def test_write_submission_constant_column_written_with_one_warning(good, sample, tmp_path):
    """A gene constant in train: DACON accepts the file (that gene scores r = 0); so do we."""
    with pytest.warns(ConstantColumnsWarning) as record:
        path = write_submission(good.assign(G3=1.0), sample, tmp_path / "submission.csv")
    assert len(record) == 1 and "'G3'" in str(record[0].message)
    back = pd.read_csv(path, dtype={"ID": str})
    assert (back["G3"] == 1.0).all() and _files(tmp_path) == ["submission.csv"]


def test_write_submission_column_constant_after_rounding(good, sample, tmp_path, recwarn):
    """1 + 1e-12·i varies in memory but is written as "1" in every row: constant on disk."""
    frame = good.assign(G2=1.0 + 1e-12 * np.arange(5))
    validate_submission(frame, sample, strict=True)  # fine in memory
    assert len(recwarn) == 0
    with pytest.raises(SubmissionError, match="'G2'"):
        write_submission(frame, sample, tmp_path / "submission.csv", strict=True)
    assert _files(tmp_path) == []
    with pytest.warns(ConstantColumnsWarning, match="'G2'"):
        write_submission(frame, sample, tmp_path / "submission.csv")
    assert _files(tmp_path) == ["submission.csv"]


def test_validate_accepts_any_row_index(good, sample, tmp_path):
    """Only the ID column counts: a frame with other index labels but the right IDs is valid."""
    frame = good.set_axis(range(10, 15))
    validate_submission(frame, sample)
    path = write_submission(frame, sample, tmp_path / "submission.csv")
    assert pd.read_csv(path)["ID"].tolist() == sample["ID"].tolist()


def test_07s_chain_is_one_outcome_that_submit_writes(tmp_path):
    """`blend_runs` gives what 07's steps gave one by one (the nested blend, its
    post-processing, the nested choice, every CV report), and `submit` writes the chosen test
    predictions and a report of all of it."""
    import json

    from conftest import make_dacon

    from utils import ensemble, submit
    from utils.config import SubmitConfig
    from utils.cv import score_folds
    from utils.data import load_data
    from utils.runs import save_run

    data = load_data(make_dacon(tmp_path, n_train=30, n_test=5))
    rng, folds = np.random.default_rng(0), np.arange(30) * 3 // 30
    for i in range(3):
        oof = data.y + rng.normal(0, 1 + i, data.y.shape)
        save_run(tmp_path / "runs" / f"r{i}", {"recipe": "ridge",
                                                "data_fingerprint": data.fingerprint}, folds, oof,
                 rng.random((5, len(data.genes))), score_folds(data.y, oof, folds, "blocks"))
    cfg = SubmitConfig(runs=[str(tmp_path / "runs" / f"r{i}") for i in range(3)],
                       submission=str(tmp_path / "sub.csv"), shrink=[0.0, 0.5])
    runs = submit.load_runs(cfg, data)
    outcome = ensemble.blend_runs(cfg, data, runs)

    oof, test = ensemble.stack_predictions(runs)
    sets = ensemble.weight_sets("global", data.genes)
    blended = ensemble.cv_blend(data.y, oof, test, folds, "global", *sets, (0.0, 0.5), "blocks")
    post = ensemble.cv_postprocess(data.y, blended.oof, blended.test_pred, folds,
                                   cfg.postprocess, blended.cv, "blocks", blended.inner_oof)
    final = ensemble.keep_best(data.y, folds, "blocks", blended, post, runs)
    np.testing.assert_array_equal(outcome.blended.oof, blended.oof)
    np.testing.assert_array_equal(outcome.post.test_pred, post.test_pred)
    np.testing.assert_array_equal(outcome.final["test_pred"], final["test_pred"])
    assert outcome.final["note"] == final["note"]
    assert list(outcome.cvs)[-3:] == ["blend global (nested)", "+ post-processing (nested)",
                                      "submitted (nested choice)"]

    frame = submit.submit(cfg, data, outcome)
    np.testing.assert_allclose(frame.set_index("ID").loc[data.test["ID"]].to_numpy(),
                               final["test_pred"], rtol=1e-6)
    report = json.loads(submit.report_path(cfg.submission).read_text())
    assert report["submitted"]["note"] == final["note"] and set(report["audit"])
    assert list(report["scores"]) == list(outcome.cvs)
