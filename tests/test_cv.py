"""utils.metric, CV side: splitters by name, group sources and the CV report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.cv import format_cv, list_splitters, make_folds, read_fold_file, score_folds
from utils.metric import KEYS, score


@pytest.mark.parametrize("n_rows,n_folds", [(10, 3), (12, 4), (7, 7), (101, 5), (5, 2)])
def test_blocks_are_contiguous_balanced_and_cover_all_rows(n_rows, n_folds):
    folds = make_folds("blocks", n_rows, n_folds)
    assert folds.shape == (n_rows,)
    assert sorted(set(folds.tolist())) == list(range(n_folds))
    assert (np.diff(folds) >= 0).all()  # each fold a contiguous range, in row order
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.sum() == n_rows and sizes.max() - sizes.min() <= 1
    for k in range(n_folds):
        rows = np.flatnonzero(folds == k)
        np.testing.assert_array_equal(rows, np.arange(rows[0], rows[-1] + 1))


def test_blocks_exact_layout():
    np.testing.assert_array_equal(make_folds("blocks", 10, 3), [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


@pytest.mark.parametrize("n_rows,n_folds", [(10, 3), (40, 4), (23, 5)])
def test_random_is_balanced_deterministic_and_not_contiguous(n_rows, n_folds):
    folds = make_folds("random", n_rows, n_folds, seed=3)
    sizes = np.bincount(folds, minlength=n_folds)
    assert sorted(set(folds.tolist())) == list(range(n_folds))
    assert sizes.sum() == n_rows and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, make_folds("random", n_rows, n_folds, seed=3))
    assert not np.array_equal(folds, make_folds("random", n_rows, n_folds, seed=4))
    assert (np.diff(folds) < 0).any()  # not the sorted, contiguous block layout


def test_file_groups_never_split_and_balanced():
    groups = np.repeat(["a", "b", "c", "d", "e", "f"], [5, 4, 3, 3, 2, 1])
    folds = make_folds("file:slice", len(groups), 3, labels=groups)
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1, g
    assert np.bincount(folds).tolist() == [6, 6, 6]  # greedy, largest groups first


def test_file_groups_accepts_numeric_labels():
    groups = [1, 1, 2, 2, 3, 3, 3]
    folds = make_folds("file:x", 7, 3, labels=groups)
    assert len(set(folds.tolist())) == 3
    assert folds[0] == folds[1] and folds[2] == folds[3] and folds[4] == folds[5] == folds[6]


def test_file_groups_fewer_groups_than_folds_errors():
    with pytest.raises(ValueError, match="2 groups"):
        make_folds("file:x", 6, 3, labels=["a", "a", "a", "b", "b", "b"])


@pytest.mark.parametrize("groups", [None, ["a", "b"]])
def test_file_groups_missing_or_wrong_length_errors(groups):
    with pytest.raises(ValueError, match="group label per train row"):
        make_folds("file", 6, 2, labels=groups)


def test_unknown_splitter_lists_choices():
    assert list_splitters() == ["blocks", "file", "random", "slices"]
    with pytest.raises(ValueError) as err:
        make_folds("kfold", 10, 2)
    for name in list_splitters():
        assert name in str(err.value)
    assert "kfold" in str(err.value)


@pytest.mark.parametrize("n_folds", [0, 1, 11, -2])
def test_bad_n_folds_errors(n_folds):
    with pytest.raises(ValueError, match="N_FOLDS"):
        make_folds("blocks", 10, n_folds)


@pytest.fixture
def train() -> pd.DataFrame:
    ids = [f"TRAIN_{i:04d}" for i in range(6)]
    return pd.DataFrame({"ID": ids, "path": [f"./train/{i}.png" for i in ids],
                         "G1": np.arange(6.0)})


def _write_groups(path, ids, **columns) -> str:
    pd.DataFrame({"ID": list(ids), **columns}).to_csv(path, index=False)
    return str(path)


def test_read_fold_file_from_named_column(train, tmp_path):
    path = _write_groups(tmp_path / "g.csv", train["ID"], group=list("aabbcc"),
                         slice=list("xxxyyy"), other=list("pqrstu"))
    np.testing.assert_array_equal(read_fold_file(f"file:{path}:slice", train), list("xxxyyy"))


def test_read_fold_file_from_file_in_data_dir(train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_groups(data_dir / "groups.csv", train["ID"][::-1], group=list("xxyyzz"),
                  other=list("pqrstu"))
    got = read_fold_file("file:groups.csv", train, data_dir)
    np.testing.assert_array_equal(got, list("zzyyxx"))  # column `group`, in train row order


def test_read_fold_file_without_group_column_uses_last_column(train, tmp_path):
    path = _write_groups(tmp_path / "g.csv", train["ID"], tissue=list("aabbcc"))
    np.testing.assert_array_equal(read_fold_file(f"file:{path}", train), list("aabbcc"))


def test_read_fold_file_file_missing_ids_errors(train, tmp_path):
    path = _write_groups(tmp_path / "g.csv", train["ID"][:4], group=list("aabb"))
    with pytest.raises(ValueError, match="2 train IDs") as err:
        read_fold_file(f"file:{path}", train)
    assert "TRAIN_0004" in str(err.value) and "TRAIN_0005" in str(err.value)
    assert "g.csv" in str(err.value)


def test_read_fold_file_missing_column_errors(train, tmp_path):
    path = _write_groups(tmp_path / "g.csv", train["ID"], group=list("aabbcc"))
    with pytest.raises(ValueError, match="'slice'"):
        read_fold_file(f"file:{path}:slice", train)


def test_read_fold_file_unknown_file_and_no_source_error(train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not found") as err:
        read_fold_file("file:nope.csv", train, tmp_path)
    assert "nope.csv" in str(err.value)
    with pytest.raises(ValueError, match="needs a file"):
        read_fold_file("file", train)


@pytest.mark.parametrize("cv", ["blocks", "random", "blocks:whatever"])
def test_read_fold_file_none_for_other_splitters(cv, train):
    assert read_fold_file(cv, train) is None


def test_score_folds_overall_is_mean_and_oof_is_pooled():
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 1.0, size=(30, 6))
    oof = y + rng.normal(size=y.shape)
    folds = make_folds("blocks", 30, 3)
    cv = score_folds(y, oof, folds, "blocks")
    assert set(cv) == {"splitter", "n_folds", "folds", "overall", "min", "max", "oof"}
    assert cv["splitter"] == "blocks" and cv["n_folds"] == 3 and len(cv["folds"]) == 3
    per_fold = [score(y[folds == k], oof[folds == k]) for k in range(3)]
    for key in KEYS:
        assert cv["overall"][key] == pytest.approx(np.mean([f[key] for f in per_fold]),
                                                   abs=1e-12), key
        assert [f[key] for f in cv["folds"]] == pytest.approx([f[key] for f in per_fold])
    assert cv["oof"] == pytest.approx(score(y, oof))
    for key in KEYS:  # the per-fold range users read next to the mean
        assert cv["min"][key] == min(f[key] for f in per_fold)
        assert cv["max"][key] == max(f[key] for f in per_fold)


def test_format_cv_mentions_splitter_and_rows():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(20, 4))
    text = format_cv(score_folds(y, y + rng.normal(size=y.shape), make_folds("random", 20, 2),
                                 "random"))
    assert "'random'" in text
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[-4:]] == ["mean", "min", "max", "OOF"]
    assert sum(line.startswith("fold") for line in lines) == 2
    for key in KEYS:
        assert key in lines[1]


def _sliced_expression(sizes=(300, 260, 280), genes=40, shift=1.0, seed=0):
    """Rows stored slice by slice: smooth spatial structure within a slice (a random walk over
    rows) plus a per-slice batch shift of every gene."""
    rng = np.random.default_rng(seed)
    parts = []
    for size in sizes:
        walk = np.cumsum(rng.normal(scale=0.05, size=(size, genes)), axis=0)
        parts.append(walk + shift * rng.normal(size=genes) + rng.normal(size=(size, genes)))
    return np.vstack(parts)


def test_slices_are_found_from_the_expression_along_row_order():
    from utils.cv import split_rows
    from utils.slices import find_slices

    y = _sliced_expression()
    found = find_slices(y)
    assert found is not None and len(found["sizes"]) == 3
    assert all(abs(e - t) <= 5 for e, t in zip(found["edges"], (300, 560))), found["edges"]
    folds, splitter, note = split_rows("slices", y, n_folds=4)
    assert splitter == "slices" and len(np.unique(folds)) == 3 and "3 slices" in note
    assert (np.diff(folds) >= 0).all()  # contiguous, in row order


def test_shuffled_rows_fall_back_to_blocks_with_a_warning():
    from utils.cv import split_rows
    from utils.slices import find_slices

    y = _sliced_expression()[np.random.default_rng(1).permutation(840)]
    assert find_slices(y) is None
    with pytest.warns(UserWarning, match="optimistic"):
        folds, splitter, _ = split_rows("slices", y, n_folds=4)
    assert splitter == "blocks" and np.array_equal(folds, make_folds("blocks", 840, 4))


@pytest.mark.parametrize("sizes", [(400, 900, 1600), (300, 300, 2000), (1600, 400, 900),
                                   (2378, 2349, 2265)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unequal_slices_are_recovered_exactly(sizes, seed, capsys):
    """Slices of any sizes (not only near-equal ones), each with smooth spatial drift and a batch
    shift of every gene, are found at exactly the planted edges; find_slices says so."""
    from utils.slices import find_slices

    found = find_slices(_sliced_expression(sizes, seed=seed))
    assert found is not None and found["sizes"] == list(sizes), found and found["sizes"]
    assert found["edges"] == np.cumsum(sizes)[:-1].tolist()
    np.testing.assert_array_equal(np.bincount(found["labels"]), sizes)
    printed = capsys.readouterr().out
    assert f"3 slices of {list(sizes)} rows" in printed
    assert "an edge needs 6" in printed and "strongest rejected" in printed  # how sure it is
    assert min(found["jumps"]) >= 6 > found["rejected"]


@pytest.mark.parametrize("sizes", [(400, 900, 1600), (300, 300, 2000), (2378, 2349, 2265)])
def test_shuffled_slices_of_any_size_show_no_structure(sizes, capsys):
    from utils.slices import find_slices

    y = _sliced_expression(sizes)
    assert find_slices(y[np.random.default_rng(1).permutation(len(y))]) is None
    printed = capsys.readouterr().out
    assert "no slice structure" in printed and "strongest jump" in printed  # how sure


def test_a_short_region_at_a_slice_end_is_not_a_slice():
    """A distinct patch of tissue of a few rows inside a slice shifts the expression as much as
    an edge does; slices hold at least MIN_SLICE_FRACTION of the rows, so it is not taken."""
    from utils.slices import MIN_SLICE_FRACTION, find_slices

    y = _sliced_expression((500, 500, 500))
    y[1480:] += 6 * np.random.default_rng(5).normal(size=y.shape[1])  # 20 rows, < 1/16 of 1500
    assert 20 < MIN_SLICE_FRACTION * len(y)
    found = find_slices(y)
    assert found["edges"] == [500, 1000]


def test_change_points_and_slices_come_from_one_detector():
    """01's change points (find_change_points) and 05's slices (find_slices) share
    detect_change_points; on sliced rows the change points include the slice edges."""
    from utils.slices import find_change_points, find_slices, row_signals

    y = _sliced_expression((400, 900, 1600))
    edges = find_slices(y)["edges"]
    points = find_change_points(row_signals(y, n_pcs=5).to_numpy(), window=len(y) // 50)
    assert set(edges) <= set(points)
