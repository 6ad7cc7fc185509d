"""Rewrite the tables of benchmarks/README.md from the results CSVs.

    python -m benchmarks.report [--check]

Each table sits between `<!-- results:<name> -->` and `<!-- /results:<name> -->`; everything
else in the README is left as it is. `--check` rewrites nothing and exits 1 when a table
differs from what the CSVs give (the test suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.record import RESULTS

README = Path(__file__).resolve().parent / "README.md"
PARTS = ("cells", "max_gene", "heg50", "hvg50")
ALL = "all"
MEAN = "mean"  # a transcribed row holding only the mean of the parts over the sections
KEYS = ["config", "run", "section"]


def read_results(path: Path, keys: list[str]) -> pd.DataFrame:
    """A results CSV, the latest row of each combination of `keys` kept (a rerun replaces)."""
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={"section": str}, keep_default_na=True,
                        na_values=["", "None", "nan"])
    return table.drop_duplicates([k for k in keys if k in table.columns], keep="last")


def fmt(value, digits: int = 4) -> str:
    """A number to `digits` decimals; blank when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table of a frame of strings."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |"
                              for r in frame.itertuples(index=False)])


def summarise_run(rows: pd.DataFrame, sections: list[str]) -> dict:
    """One run of one config: its score per held-out section, their mean, the parts' means
    (from a transcribed MEAN row when the sections lack them), the choosing CV, the all-sections
    headline, minutes and where the rows came from."""
    held = rows[rows["section"].isin(sections)].set_index("section")
    mean_row = rows[rows["section"] == MEAN]
    out = {s: fmt(held["score"].get(s, np.nan)) for s in sections}
    out["held-out mean"] = f"**{fmt(held['score'].mean())}**" if len(held) == len(
        sections) else fmt(held["score"].mean())
    for part in PARTS:
        values = held[part].dropna()
        out[part] = fmt(values.mean() if len(values) else (
            mean_row[part].iloc[0] if len(mean_row) else np.nan))
    cv = held["cv_score"].dropna()
    out["choosing CV"] = fmt(cv.mean() if len(cv) else (
        mean_row["cv_score"].iloc[0] if len(mean_row) else np.nan))
    every = rows[rows["section"] == ALL]
    out["all-sections CV [range]"] = "" if every.empty else fmt(every["cv_score"].iloc[0]) + (
        "" if every[["cv_min", "cv_max"]].iloc[0].isna().any() else
        f" [{fmt(every['cv_min'].iloc[0], 3)}, {fmt(every['cv_max'].iloc[0], 3)}]")
    minutes = held["seconds"].dropna().sum() / 60 if "seconds" in held else np.nan
    out["minutes"] = fmt(minutes, 1) if minutes > 0 else ""
    out["source"] = ", ".join(dict.fromkeys(rows["source"].dropna().astype(str)))
    return out


def heldout_table(table: pd.DataFrame) -> str:
    """One markdown table per config: a row per run, a column per held-out section."""
    blocks = []
    for config, rows in table.groupby("config", sort=False):
        sections = sorted(set(rows["section"]) - {ALL, MEAN})
        summary = [{"run": run, **summarise_run(r, sections)}
                   for run, r in rows.groupby("run", sort=False)]
        machine = ", ".join(dict.fromkeys(
            f"{c} ({int(n)} cores)" for c, n in rows[["cpu", "cores"]].dropna()
            .itertuples(index=False))) if {"cpu", "cores"} <= set(rows) else ""
        caption = f"**{config}**" + (f" ({machine})" if machine else "")
        blocks.append(caption + "\n\n" + markdown(pd.DataFrame(summary)))
    return "\n\n".join(blocks)


SPEED_KEYS = ["config", "item", "stage", "mode", "size"]
SPEED_COLUMNS = ("config", "item", "stage", "mode", "size", "seconds", "per_s",
                 "ratio_to_forward", "minutes_at_scale", "detail", "cpu", "cores", "date", "source")


def speed_table(table: pd.DataFrame) -> str:
    """The speed rows as they are (the latest per config, item, stage, mode and size)."""
    columns = [c for c in SPEED_COLUMNS if c in table.columns]
    shown = table[columns].map(lambda v: fmt(v, 3) if isinstance(v, float) else fmt(v))
    return markdown(shown)


def tables(results: Path = RESULTS) -> dict[str, str]:
    """Every generated table by marker name."""
    out = {}
    heldout = read_results(results / "heldout.csv", KEYS)
    if len(heldout):
        out["heldout"] = heldout_table(heldout)
    speed = read_results(results / "speed.csv", SPEED_KEYS)
    if len(speed):
        out["speed"] = speed_table(speed)
    return out


def render(text: str, generated: dict[str, str]) -> str:
    """The README with each marked table replaced by its generated one."""
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)",
                             re.S)
        if not pattern.search(text):
            raise ValueError(f"{README.name}: no <!-- results:{name} --> … markers")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a diff")
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    new = render(text, tables(Path(args.results)))
    if args.check:
        print("up to date" if new == text else f"{path} differs from the results CSVs: run "
              "python -m benchmarks.report")
        return int(new != text)
    path.write_text(new)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
