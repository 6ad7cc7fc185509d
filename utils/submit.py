"""07_ensemble_submit after the blend: audit the predictions, build and validate the submission,
write it atomically with the blend report beside it.

The audit compares, per gene, the train distribution with the OOF and test predictions' and flags
constant, flat or shifted columns. A submission is refused for wrong columns, rows or ID order and
NaN/inf; constant gene columns (valid for DACON, each scored r = 0) give a
`ConstantColumnsWarning`, or are refused with STRICT. The file is checked again as written, so
a column that only becomes constant once rounded to text is caught too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.config import to_dict
from utils.cv import selection_rule
from utils.ensemble import BlendOutcome, run_labels
from utils.files import InputOutputError, check_output, protect_runs, write_json, write_with
from utils.metric import top_genes
from utils.places import resolve
from utils.runs import Run, check_folds, check_same_data, load_run, select_runs

NEAR_CONSTANT = 1e-3  # a predicted column with sd below this fraction of the train sd


# --- the audit --------------------------------------------------------------------------------

def audit_predictions(y: np.ndarray, oof: np.ndarray, test_pred: np.ndarray,
                      genes: Sequence[str]) -> pd.DataFrame:
    """Per gene: the train distribution next to the OOF and test predictions', with flags."""
    y = np.asarray(y, dtype=np.float64)
    oof, test_pred = np.asarray(oof, np.float64), np.asarray(test_pred, np.float64)
    train_sd, oof_sd, test_sd = y.std(axis=0), oof.std(axis=0), test_pred.std(axis=0)
    low, high = y.min(axis=0), y.max(axis=0)
    flat = (np.ptp(test_pred, axis=0) == 0) | (test_sd < NEAR_CONSTANT * train_sd)
    top = top_genes(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pd.DataFrame({
            "train_mean": y.mean(axis=0), "train_sd": train_sd, "oof_mean": oof.mean(axis=0),
            "oof_sd": oof_sd, "test_mean": test_pred.mean(axis=0), "test_sd": test_sd,
            "test_sd_ratio": test_sd / train_sd, "test_vs_oof_sd": test_sd / oof_sd,
            "test_shift": (test_pred.mean(axis=0) - oof.mean(axis=0)) / train_sd,
            "outside_train_range": ((test_pred < low) | (test_pred > high)).mean(axis=0),
            "near_constant": flat,
            "train_constant": np.ptp(y, axis=0) == 0,
            "scored": np.isin(np.arange(y.shape[1]), np.union1d(top["heg50"], top["hvg50"])),
        }, index=pd.Index(list(genes), name="gene"))
    return table


def summarize_audit(table: pd.DataFrame) -> pd.DataFrame:
    """Quantiles (over genes) of each numeric audit column, all genes and the scored ones."""
    numeric = table.select_dtypes("number").replace([np.inf, -np.inf], np.nan)
    quantiles = [0.05, 0.5, 0.95]
    summary = numeric.quantile(quantiles).T.add_prefix("all q")
    scored = numeric[table["scored"]].quantile(quantiles).T.add_prefix("scored q")
    return pd.concat([summary, scored], axis=1)


def audit_flags(table: pd.DataFrame) -> dict[str, list[str]]:
    """Genes worth a look before writing: constant predictions (scored r = 0), flat ones, flat
    train targets, big shifts."""
    constant = table["test_sd"] == 0
    return {"constant_predictions": table.index[constant].tolist(),
            "near_constant_predictions": table.index[table["near_constant"]].tolist(),
            "constant_in_train": table.index[table["train_constant"]].tolist(),
            "test_shift_over_1_sd": table.index[table["test_shift"].abs() > 1].tolist()}


def plot_audit(table: pd.DataFrame):
    """Predicted vs train spread and mean per gene (OOF and test), and the train→test shift."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, what in zip(axes[:2], ("sd", "mean")):
        for split, colour in (("oof", "tab:blue"), ("test", "tab:orange")):
            ax.scatter(table[f"train_{what}"], table[f"{split}_{what}"], s=4, alpha=0.4,
                       c=colour, label=f"{split} predictions")
        lim = [0 if what == "sd" else table[f"train_{what}"].min(), table[f"train_{what}"].max()]
        ax.plot(lim, lim, "k--", lw=1, label="= train")
        ax.set(xlabel=f"train {what} per gene", ylabel=f"predicted {what}",
               title=f"per-gene {what}: predicted vs train")
        ax.legend(fontsize="small")
    axes[0].set(xlim=(0, None), ylim=(0, None))
    shift = table["test_shift"].replace([np.inf, -np.inf], np.nan).dropna()
    axes[2].hist(shift, bins=50, color="gray")
    axes[2].set(xlabel="(test mean − OOF mean) / train sd", ylabel="genes",
                title="train → test shift in prediction space")
    return fig


def plot_prediction_pca(oof: np.ndarray, test_pred: np.ndarray, n_fit: int = 1000):
    """OOF and test predictions on the first two principal components of the OOF predictions
    (standardised per gene; the components are fitted on at most n_fit evenly spaced rows)."""
    import matplotlib.pyplot as plt

    oof, test_pred = np.asarray(oof, np.float64), np.asarray(test_pred, np.float64)
    mean, sd = oof.mean(axis=0), oof.std(axis=0)
    sd[sd == 0] = 1.0
    sample = oof[np.linspace(0, len(oof) - 1, min(n_fit, len(oof))).astype(int)]
    _, s, vt = np.linalg.svd((sample - mean) / sd, full_matrices=False)
    explained = s[:2] ** 2 / (s ** 2).sum()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for split, pred, colour in (("OOF", oof, "tab:blue"), ("test", test_pred, "tab:orange")):
        z = ((pred - mean) / sd) @ vt[:2].T
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.4, c=colour, label=f"{split} ({len(pred)})")
    ax.set(xlabel=f"PC1 ({explained[0]:.0%})", ylabel=f"PC2 ({explained[1]:.0%})",
           title="predictions: train (OOF) vs test")
    ax.legend()
    return fig


def report_path(submission: str | os.PathLike) -> Path:
    """Where the blend report goes: beside the submission, `<name>.blend.json`."""
    return resolve(submission).with_suffix(".blend.json")


def write_blend_report(submission: str | os.PathLike, config: dict, outcome: BlendOutcome,
                       flags: dict[str, list[str]]) -> Path:
    """Write what the submission is made of and how it scored (every CV report) as JSON."""
    runs, blended, post = outcome.runs, outcome.blended, outcome.post
    labels = run_labels(runs)
    report = {
        "config": config, "submission": str(resolve(submission)),
        "data_fingerprint": runs[0].config.get("data_fingerprint") if runs else None,
        "runs": [{"label": label, "path": str(run.path), "recipe": run.config.get("recipe"),
                  "backbone": run.config.get("backbone"), "splitter": run.cv["splitter"]}
                 for label, run in zip(labels, runs)],
        "blend": {"mode": blended.mode, "shrink": blended.shrink,
                  "fold_shrinks": blended.fold_shrinks, "fitted_on": blended.fitted_on,
                  "selection": selection_rule(runs[0].folds, len(blended.shrink_curve["shrink"])),
                  "shrink_curve": blended.shrink_curve, "weight_sets": blended.sets,
                  "weights": dict(zip(labels, blended.weights.tolist()))},
        "postprocess": {"applied": list(post.steps), "gain": post.gain, "curve": post.curve,
                        "fold_steps": [list(s) for s in post.fold_steps],
                        "selection": selection_rule(runs[0].folds, len(post.curve))},
        "scores": outcome.cvs,
        "audit": {name: {"count": len(genes), "genes": genes[:50]}
                  for name, genes in flags.items()},
        "submitted": {k: outcome.final[k] for k in ("kept", "fold_choices", "note", "selection")
                      if k in outcome.final},
    }
    return write_json(report_path(submission), report)


# --- the submission file --------------------------------------------------------------------

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


class ConstantColumnsWarning(UserWarning):
    """The submission has constant gene columns: valid for DACON, but each is scored r = 0."""


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame,
                        strict: bool = False) -> list[str]:
    """Refuse wrong columns, row count or ID order and NaN/inf; constant gene columns (scored
    r = 0) give a ConstantColumnsWarning, or a SubmissionError if `strict`. The constant genes."""
    constant = _check_submission(frame, sample)
    _refuse_or_warn(constant, len(sample.columns) - 1, strict)
    return constant


def _check_submission(frame: pd.DataFrame, sample: pd.DataFrame) -> list[str]:
    """Every hard check of validate_submission; the names of the constant gene columns."""
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
    return [expected[1 + c] for c in np.flatnonzero(np.ptp(values, axis=0) == 0)]


def _refuse_or_warn(constant: list[str], n_genes: int, strict: bool) -> None:
    """Say what constant columns cost; refuse them if `strict`."""
    if not constant:
        return
    what = (f"{len(constant)} of {n_genes} gene columns are constant, e.g. {constant[:10]}; "
            f"DACON scores each of them r = 0 (no loss in cells or max_gene; -1/50 of heg50 or "
            f"hvg50 for each that is among the test slice's 50 top genes)")
    if strict:
        raise SubmissionError(f"{what}. STRICT=True refuses such a file; set STRICT=False to "
                              f"write it anyway")
    warnings.warn(f"{what}. Written anyway (STRICT=False); the audit lists them as "
                  f"constant_predictions", ConstantColumnsWarning, stacklevel=3)


def _check_finite(values: np.ndarray, genes: list[str], ids: pd.Series) -> None:
    """NaN/inf cells → SubmissionError naming rows and columns."""
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise SubmissionError(f"NaN or inf in {len(rows)} rows (IDs {ids.iloc[rows[:5]].tolist()})"
                              f" and {len(cols)} columns ({[genes[c] for c in cols[:5]]})")


def write_submission(frame: pd.DataFrame, sample: pd.DataFrame,
                     path: str | os.PathLike, strict: bool = False) -> Path:
    """Validate, write to a temporary file, validate what was written, then rename into place.

    Reading the file back catches columns that only become constant once rounded to text; the
    warning (or, with `strict`, the refusal) about constant columns is about the file on disk.
    A crash at any point leaves the previous file (or none), never a half-written one.
    """
    n_genes = len(sample.columns) - 1
    if strict:
        _refuse_or_warn(_check_submission(frame, sample), n_genes, strict)
    else:
        _check_submission(frame, sample)

    def write_and_check(tmp: Path) -> None:
        frame.to_csv(tmp, index=False, float_format="%.7g")
        written = _check_submission(pd.read_csv(tmp, dtype={"ID": str}), sample)
        _refuse_or_warn(written, n_genes, strict)

    return write_with(path, write_and_check)


# --- 07's steps -------------------------------------------------------------------------------

def load_runs(cfg, data) -> list[Run]:
    """The runs of RUNS (or every finished run under RUNS_ROOT), checked to have been trained on
    `data` (rows, genes, targets, test IDs, images: `check_same_data`) and to share one CV
    split; their folders become inputs (nothing is written in them) and SUBMISSION is checked
    against every input (`check_submission_path`)."""
    runs = [load_run(path) for path in select_runs(cfg.runs, cfg.runs_root)]
    check_same_data(runs, data)
    check_folds(runs)
    protect_runs([run.path for run in runs])
    check_submission_path(cfg)
    return runs


def check_submission_path(cfg) -> Path:
    """SUBMISSION resolved, or an InputOutputError naming it: a folder, a file of the data or
    inside a run folder read here, or GENE_GROUPS."""
    path = check_output(cfg.submission, "SUBMISSION", folder=False)
    why = ("it is a folder; SUBMISSION is the path of a CSV file" if path.is_dir() else
           "it is GENE_GROUPS, an input here" if cfg.gene_groups and path.resolve() == resolve(
               cfg.gene_groups).resolve() else None)
    if why:
        raise InputOutputError(f"SUBMISSION={str(cfg.submission)!r} resolves to "
                               f"{path.resolve()}: {why}. Choose another path (e.g. "
                               "submissions/submission.csv)")
    return path


def audit(y: np.ndarray, genes: Sequence[str], final: dict) -> tuple[pd.DataFrame, dict]:
    """`audit_predictions` of what will be submitted (`keep_best`'s choice) and its flags."""
    table = audit_predictions(y, final["oof"], final["test_pred"], genes)
    return table, audit_flags(table)


def describe_flags(flags: dict[str, list[str]]) -> str:
    """One line per audit flag: how many genes, the first ten."""
    return "\n".join(f"{name}: {len(genes)} genes {genes[:10]}" for name, genes in flags.items())


def submit(cfg, data, outcome: BlendOutcome) -> pd.DataFrame:
    """Write SUBMISSION (validated, atomically) from the test predictions 07 chose
    (`outcome.final`) and the blend report beside it (with the audit's flags); prints where;
    returns the submission frame."""
    final = outcome.final
    frame = make_submission(final["test_pred"], data.test["ID"].tolist(), data.sample)
    path = write_submission(frame, data.sample, resolve(cfg.submission), strict=cfg.strict)
    report = write_blend_report(cfg.submission, to_dict(cfg), outcome,
                                audit(data.y, data.genes, final)[1])
    print(f"wrote {path}: {frame.shape[0]} rows x {frame.shape[1] - 1} genes; report {report}")
    return frame
