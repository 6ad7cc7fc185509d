"""Checks on the real HER2ST benchmark in ../shared (skipped in users' clones, which lack it)."""

import numpy as np
import pandas as pd
import pytest

from utils.cv import make_folds
from utils.data import load_data
from utils.places import kit_root

HER2ST = kit_root().parent / "shared" / "her2st"
pytestmark = [
    pytest.mark.her2st,
    pytest.mark.skipif(not HER2ST.is_dir(), reason=f"{HER2ST} is absent (benchmark data lives "
                       "beside the kit in the founders' workspace only)"),
]


def test_her2st_passes_every_data_check():
    data = load_data(HER2ST)
    assert data.y.shape == (732, 1541) and len(data.test) == 178
    assert np.isfinite(data.y).all()


def test_block_folds_recover_the_sections():
    """Rows are stored section by section, so 4 contiguous blocks ≈ the 4 sections."""
    data = load_data(HER2ST)
    sections = pd.read_csv(HER2ST / "train_sections.csv").set_index("ID").loc[data.train["ID"]]
    section_index = pd.factorize(sections["section"])[0]
    folds = make_folds("blocks", len(data.train), 4)
    assert (folds == section_index).mean() > 0.95


def test_slices_found_from_the_expression_are_the_sections():
    """CV="slices" (the default) finds the 4 sections from the expression alone."""
    from utils.slices import find_slices

    data = load_data(HER2ST)
    sections = pd.read_csv(HER2ST / "train_sections.csv").set_index("ID").loc[data.train["ID"]]
    found = find_slices(data.y)
    assert found is not None and len(found["sizes"]) == 4, found
    assert (found["labels"] == pd.factorize(sections["section"])[0]).mean() > 0.98
    sizes = sections["section"].value_counts(sort=False).tolist()  # 187, 180, 184, 181
    assert all(abs(a - b) <= 3 for a, b in zip(found["sizes"], sizes)), (found["sizes"], sizes)


@pytest.mark.parametrize("held_out", ["C2", "C3", "C4", "C5"])
def test_slices_are_found_without_each_section(held_out):
    """her2st_unseen trains on three sections: their slices are found too (C3 out leaves C2
    beside C4, whose edge the equal-size detector missed), each edge within 3 rows."""
    from utils.slices import find_slices

    data = load_data(HER2ST)
    sections = pd.read_csv(HER2ST / "train_sections.csv").set_index("ID").loc[data.train["ID"]]
    keep = (sections["section"] != held_out).to_numpy()
    found = find_slices(data.y[keep])
    sizes = sections["section"][keep].value_counts(sort=False).tolist()
    assert found is not None and len(found["sizes"]) == 3, found
    assert all(abs(a - b) <= 3 for a, b in zip(found["sizes"], sizes)), (found["sizes"], sizes)


def test_shuffled_her2st_rows_show_no_slices():
    from utils.slices import find_slices

    data = load_data(HER2ST)
    assert find_slices(data.y[np.random.default_rng(0).permutation(len(data.y))]) is None
