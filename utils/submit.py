"""Build, validate and write a DACON submission from test predictions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from utils.io import write_with


class SubmissionError(ValueError):
    """The submission would be rejected or scored as garbage; the message says what and where."""


def make_submission(test_pred: np.ndarray, test_ids: list[str],
                    sample: pd.DataFrame) -> pd.DataFrame:
    """Predictions (rows in test.csv order) as a frame in sample_submission's ID order/columns."""
    genes = list(sample.columns[1:])
    test_pred = np.asarray(test_pred)
    if test_pred.shape != (len(test_ids), len(genes)):
        raise SubmissionError(f"predictions have shape {test_pred.shape}; expected "
                              f"({len(test_ids)} test rows, {len(genes)} genes)")
    frame = pd.DataFrame(test_pred, columns=genes)
    frame.insert(0, "ID", list(test_ids))
    unknown = sorted(set(sample["ID"]) - set(test_ids))
    if unknown:
        raise SubmissionError(f"{len(unknown)} sample_submission IDs have no prediction, e.g. "
                              f"{unknown[:5]}")
    return frame.set_index("ID").loc[sample["ID"]].reset_index()


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Refuse wrong columns, row count or ID order, NaN/inf and constant gene columns."""
    columns, expected = list(frame.columns), list(sample.columns)
    if columns != expected:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        raise SubmissionError(f"columns differ from sample_submission.csv: {len(missing)} missing "
                              f"{missing[:10]}, {len(extra)} extra {extra[:10]}"
                              + ("" if missing or extra else " (same names, different order)"))
    if len(frame) != len(sample):
        raise SubmissionError(f"{len(frame)} rows; sample_submission.csv has {len(sample)}")
    if frame["ID"].astype(str).tolist() != sample["ID"].astype(str).tolist():
        raise SubmissionError("IDs are not those of sample_submission.csv in the same order")
    values = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
    _check_finite(values, expected[1:], frame["ID"])
    constant = np.flatnonzero(np.ptp(values, axis=0) == 0)
    if len(constant):
        raise SubmissionError(f"{len(constant)} gene columns are constant (scored as r = 0, "
                              f"and a sign of a broken model), e.g. "
                              f"{[expected[1 + c] for c in constant[:10]]}")


def _check_finite(values: np.ndarray, genes: list[str], ids: pd.Series) -> None:
    """NaN/inf cells → SubmissionError naming rows and columns."""
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise SubmissionError(f"NaN or inf in {len(rows)} rows (IDs {ids.iloc[rows[:5]].tolist()})"
                              f" and {len(cols)} columns ({[genes[c] for c in cols[:5]]})")


def write_submission(frame: pd.DataFrame, sample: pd.DataFrame,
                     path: str | os.PathLike) -> Path:
    """Validate, write to a temporary file, validate what was written, then rename into place.

    Reading the file back catches columns that only become constant once rounded to text.
    """
    validate_submission(frame, sample)

    def write_and_check(tmp: Path) -> None:
        frame.to_csv(tmp, index=False, float_format="%.7g")
        validate_submission(pd.read_csv(tmp, dtype={"ID": str}), sample)

    return write_with(path, write_and_check)
