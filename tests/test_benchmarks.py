"""benchmarks/: two harnesses run as modules from a plain clone, every config parses, and the
README's tables are the ones `benchmarks.report` generates from the results CSVs."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import KIT_ROOT

from benchmarks import heldout, report, speed

BENCH = KIT_ROOT / "benchmarks"


def test_benchmarks_run_as_their_docstrings_say_from_a_plain_clone():
    """Every command-line benchmark's usage is `python -m benchmarks.<its name>` (a script run
    by path would not find `utils` without an installed kit), and it starts that way with no
    PYTHONPATH."""
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"python benchmarks/(?!gpu_check)", text), path.name
        if "__main__" in text and path.stem != "gpu_check":
            assert f"-m benchmarks.{path.stem}" in text, f"{path.name}: usage line"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for module, option in (("heldout", "--sections"), ("speed", "--results")):
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--help"],
                              cwd=KIT_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and option in done.stdout, done.stderr


def test_every_config_parses():
    configs = sorted((BENCH / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        bench = (speed.read_config(path) if re.search(r"^scale:", text, re.M)
                 else heldout.read_config(path))
        assert bench.name == path.stem


def test_readme_tables_are_generated_from_the_results_csvs():
    text = (BENCH / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert report.render(text, report.tables()) == text, "run python -m benchmarks.report"
    assert report.main(["--check"]) == 0
    assert not re.search(r"\b(issue|session) \d", text, re.I)


def test_report_summarises_sections_and_transcribed_means(tmp_path):
    rows = [{"config": "c", "run": "r", "section": s, "score": v, "cells": 0.6,
             "max_gene": 0.5, "heg50": 0.3, "hvg50": 0.4, "cv_score": 0.5, "cv_min": 0.4,
             "cv_max": 0.6, "seconds": 30, "cpu": "cpu", "cores": 2, "source": "harness"}
            for s, v in (("A", 0.5), ("B", 0.7), ("all", None))]
    rows[-1].update(cells=None, max_gene=None, heg50=None, hvg50=None)
    rows += [{"config": "old", "run": "t", "section": "A", "score": 0.4, "source": "script"},
             {"config": "old", "run": "t", "section": "mean", "cells": 0.66, "cv_score": 0.45,
              "source": "script"},
             {"config": "c", "run": "r", "section": "B", "score": 0.9, "cells": 0.6,
              "max_gene": 0.5, "heg50": 0.3, "hvg50": 0.4, "cv_score": 0.5, "cv_min": 0.4,
              "cv_max": 0.6, "seconds": 30, "source": "harness"}]  # a rerun: the last counts
    (tmp_path / "heldout.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    tables = report.tables(tmp_path)
    lines = tables["heldout"].splitlines()
    assert lines[0] == "**c** (cpu (2 cores))"
    assert lines[2].startswith("| run | A | B | held-out mean | cells |")
    assert lines[4].startswith("| r | 0.5000 | 0.9000 | **0.7000** | 0.6000 |")
    assert "| 0.5000 | 0.5000 [0.400, 0.600] | 1.0 | harness |" in lines[4]  # 2 sections × 30 s
    old = next(line for line in lines if line.startswith("| t |"))
    assert old.startswith("| t | 0.4000 | **0.4000** | 0.6600 |") and "| 0.4500 |" in old
    readme = "x\n<!-- results:heldout -->\nold\n<!-- /results:heldout -->\ny\n"
    assert report.render(readme, tables) == readme.replace("old", tables["heldout"])
    with pytest.raises(ValueError, match="no <!-- results:speed -->"):
        report.render(readme, {"speed": "t"})


def measured_numbers(results=BENCH / "results" / "heldout.csv") -> set[str]:
    """Every her2st number a user-facing file may quote, to three decimals: each run's held-out
    mean over its sections, its choosing CV and its all-sections CV, as the report computes them."""
    table = report.read_results(results, report.KEYS)
    numbers = set()
    for _, rows in table.groupby("config", sort=False):
        sections = sorted(set(rows["section"]) - {report.ALL, report.MEAN})
        for _, run in rows.groupby("run", sort=False):
            summary = report.summarise_run(run, sections)
            for key in ("held-out mean", "choosing CV", "all-sections CV [range]"):
                numbers.update(f"{float(v):.3f}" for v in re.findall(r"0\.\d+", summary[key]))
    return numbers


def test_scores_the_readmes_quote_are_rows_of_the_results():
    """A held-out or CV score in the README, presets/README.md or a preset comes from
    benchmarks/results/heldout.csv (rounded to three decimals), never typed in by hand."""
    measured = measured_numbers()
    files = [KIT_ROOT / "README.md", KIT_ROOT / "presets" / "README.md",
             *sorted((KIT_ROOT / "presets").glob("*.yaml"))]
    texts = {str(path.relative_to(KIT_ROOT)): path.read_text() if path.suffix == ".md"
             else "\n".join(line.partition("#")[2] for line in path.read_text().splitlines())
             for path in files}  # a preset's values are parameters: only its comments count
    quoted = {(name, n) for name, text in texts.items()
              for n in re.findall(r"(?<![\d.])0\.\d{3}(?!\d)", text)}
    assert quoted, "the README quotes the plans' held-out scores"
    stray = sorted((name, n) for name, n in quoted if n not in measured)
    assert not stray, f"numbers not in benchmarks/results/heldout.csv: {stray}"
