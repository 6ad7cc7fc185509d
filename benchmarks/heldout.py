"""Held-out sections: for every run of a config, train on all sections but one and score the
one held out; one results row per (run, section).

    python -m benchmarks.heldout benchmarks/configs/her2st_cpu.yaml --data /path/to/her2st
        [--sections FILE] [--weights DIR] [--only RUN ...] [--held C2 ...] [--results CSV]

The data folder has the DACON layout plus a sections file (ID → section; `train_sections.csv`
unless the config or `--sections` names another). Every choice is nested in the training
sections: a 05 run chooses alpha, k, epochs … by its own CV on them (with `cv: sections`, one
fold per training section), a 07 run blends the 05 runs of the same rotation and chooses its
weights, post-processing and what to keep on their folds. The held-out section only confirms.

The full data is loaded once; each rotation is a row subset of it (`utils.data.rows_of`), so
images and features are cached once for the full data (under $KIT_CACHE_DIR) and sliced.
Runs go through 05's `utils.train.train` and 07's steps in `utils.ensemble`, written under
`--out` (a finished identical run is reused, so an interrupted benchmark resumes).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.record import RESULTS, append_rows, environment
from utils import ensemble, submit
from utils.config import SubmitConfig, TrainConfig, from_params, read_preset, to_dict
from utils.data import KitData, load_data, rows_of
from utils.metric import PARTS, score
from utils.runs import Run, peak_rss_gb
from utils.train import make_cv_folds, train

KIT = Path(__file__).resolve().parents[1]
METRIC = ("score", *PARTS)


@dataclass(frozen=True)
class RunSpec:
    """One run of a config: a name, 05 or 07 parameters (UPPER_CASE, as a preset), and for a
    07 run the names of its member runs."""

    name: str
    params: dict
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bench:
    """A held-out benchmark config (see `read_config`)."""

    name: str
    runs: tuple[RunSpec, ...]
    sections: str = "train_sections.csv"
    cv: str = "sections"
    weights: str | None = None


def expand_grid(entry: dict) -> list[dict]:
    """A config entry with `grid: {PARAM: [values]}` as one entry per combination, each named
    after its values ("cpu_best TARGET_PCA=8"); an entry without a grid as itself."""
    grid = entry.get("grid") or {}
    out = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        name = " ".join([entry["name"], *(f"{k}={v}" for k, v in setting.items())])
        out.append({**entry, "name": name, "set": {**entry.get("set", {}), **setting}})
    return out


def member_names(params: dict, specs: list[RunSpec], name: str) -> tuple[str, ...]:
    """The config runs a 07 preset's RUNS point at (matched on their RUN_DIR)."""
    by_dir = {s.params.get("RUN_DIR"): s.name for s in specs}
    missing = [r for r in params.get("RUNS") or [] if r not in by_dir]
    if missing or not params.get("RUNS"):
        raise ValueError(f"run {name!r}: its RUNS {params.get('RUNS')} must be RUN_DIRs of "
                         f"runs listed before it in the config (missing {missing})")
    return tuple(by_dir[r] for r in params["RUNS"])


def read_config(path: str | os.PathLike) -> Bench:
    """A benchmark config: `runs` (each a `name`, an optional `preset`, optional `set` of
    parameters, an optional `grid`, and for 07 optional `members`), `sections`, `cv`
    ("sections": one CV fold per training section; else a 05 CV value) and `weights` (a
    folder of weight files that PRETRAINED true reads)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"name", "runs", "sections", "cv", "weights", "set"}
    if unknown or not raw.get("runs"):
        raise ValueError(f"{path}: needs `runs`; unknown keys {sorted(unknown)}")
    specs: list[RunSpec] = []
    for entry in (e for raw_entry in raw["runs"] for e in expand_grid(raw_entry)):
        if "name" not in entry:
            raise ValueError(f"{path}: every run needs a `name`; got {entry}")
        preset = read_preset(entry["preset"]) if entry.get("preset") else {}
        params = {**preset, **raw.get("set", {}), **entry.get("set", {})}
        members = tuple(entry.get("members", ())) if "RUNS" not in params or entry.get(
            "members") else member_names(params, specs, entry["name"])
        specs.append(RunSpec(entry["name"], params, members))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: run names repeat: {names}")
    return Bench(raw.get("name", path.stem), tuple(specs), raw.get("sections",
                 "train_sections.csv"), raw.get("cv", "sections"), raw.get("weights"))


def read_sections(data: KitData, path: Path) -> np.ndarray:
    """Each train row's section from a CSV of ID and section (its `section` column, else the
    last one), in train row order."""
    if not path.is_file():
        raise FileNotFoundError(f"sections file {path} does not exist (ID → section; --sections)")
    table = pd.read_csv(path, dtype=str)
    column = "section" if "section" in table.columns else table.columns[-1]
    if "ID" not in table.columns:
        raise ValueError(f"{path}: needs an ID column; has {list(table.columns)}")
    table = table.drop_duplicates("ID").set_index("ID")
    missing = sorted(set(data.train["ID"]) - set(table.index))
    if missing:
        raise ValueError(f"{path}: no section for {len(missing)} train IDs, e.g. {missing[:3]}")
    sections = table.loc[data.train["ID"], column].to_numpy()
    if len(set(sections)) < 3:
        raise ValueError(f"{path}: {len(set(sections))} sections; holding one out and "
                         "choosing by CV on the others needs at least 3")
    return sections


def weights_for(params: dict, folder: str | None) -> dict:
    """PRETRAINED true read from `folder` (the backbone's `<name>*.safetensors` there)."""
    if params.get("PRETRAINED", True) is not True or not folder:
        return params
    backbone = params.get("BACKBONE", TrainConfig.backbone)
    found = sorted(Path(folder).glob(f"{backbone}.*safetensors")) or sorted(
        Path(folder).glob(f"{backbone}*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no weights for {backbone} in {folder} (--weights)")
    return {**params, "PRETRAINED": str(found[0].resolve())}


def train_config(spec: RunSpec, bench: Bench, cv: dict, run_dir: Path) -> TrainConfig:
    """The 05 config of a run in one rotation (`cv`: its CV parameters)."""
    params = {**weights_for(spec.params, bench.weights), **cv, "RUN_DIR": str(run_dir)}
    return from_params(TrainConfig, params)


def run_05(spec: RunSpec, bench: Bench, data: KitData, cv: dict, folder: Path) -> tuple[Run, str]:
    """05 on the rotation's training rows; the run and its nested choice in words."""
    cfg = train_config(spec, bench, cv, folder / slug(spec.name))
    folds, splitter = make_cv_folds(cfg, data)
    run = train(cfg, data, folds, splitter)  # a finished identical run is read back
    details = run.config.get("details", {})
    choice = {k: details[k] for k in ("alpha", "n_nearest", "temperature", "epochs")
              if k in details}
    return run, "; ".join(f"{k}={v}" for k, v in choice.items())


def run_07(spec: RunSpec, data: KitData, runs: dict[str, Run], folder: Path) -> tuple[Run, str]:
    """07 over the rotation's member runs: nested blend, post-processing, keep-best."""
    members = [runs[m] for m in spec.members]
    params = {**spec.params, "RUNS": [str(r.path) for r in members],
              "SUBMISSION": str(folder / f"{slug(spec.name)}.csv")}
    cfg = from_params(SubmitConfig, params)
    chosen = submit.load_runs(cfg, data)
    final = ensemble.blend_runs(cfg, data, chosen).final
    run = Run(folder / slug(spec.name), to_dict(cfg), final["cv"], chosen[0].folds,
              final["oof"], final["test_pred"])
    return run, f"kept {final['kept']}"


def slug(name: str) -> str:
    """A run name as a folder name."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


ALL = "all"  # the rotation with no section held out: the headline a run on every row prints


def rotation_data(data: KitData, sections: np.ndarray, held: str) -> tuple[KitData, np.ndarray]:
    """The rotation's data (train: every other section; test: the held-out one, or the data's
    own test rows for ALL) and the train rows it keeps."""
    if held == ALL:
        return data, np.arange(len(data.train))
    train_rows = np.flatnonzero(sections != held)
    return rows_of(data, train_rows, np.flatnonzero(sections == held), "train",
                   f"{held} held out"), train_rows


def rotation_cv(bench: Bench, part: KitData, sections: np.ndarray, folder: Path) -> dict:
    """The CV parameters of the rotation's 05 runs: with `cv: sections` one fold per training
    section, through 05's own file splitter (CV="file:…")."""
    if bench.cv != "sections":
        return {"CV": bench.cv}
    cv_file = folder / "sections.csv"
    pd.DataFrame({"ID": part.train["ID"], "section": sections}).to_csv(cv_file, index=False)
    return {"CV": f"file:{cv_file}:section", "N_FOLDS": len(set(sections))}


def needed(bench: Bench, only: set[str] | None) -> list[RunSpec]:
    """The runs to score and the members they blend."""
    if only is None:
        return list(bench.runs)
    members = {m for s in bench.runs if s.name in only for m in s.members}
    return [s for s in bench.runs if s.name in only | members]


@dataclass
class Rotation:
    """One held-out section (or ALL): its data, CV parameters, run folder, the held-out
    targets (None for ALL) and the runs trained so far (07 blends them)."""

    held: str
    data: KitData
    cv: dict
    folder: Path
    truth: np.ndarray | None
    runs: dict[str, Run] = field(default_factory=dict)


def make_rotation(bench: Bench, data: KitData, sections: np.ndarray, held: str,
                  out: Path) -> Rotation:
    """The rotation holding `held` out (its folder made, its sections file written)."""
    part, train_rows = rotation_data(data, sections, held)
    folder = out / bench.name / slug(held)
    folder.mkdir(parents=True, exist_ok=True)
    truth = None if held == ALL else data.y[sections == held]
    return Rotation(held, part, rotation_cv(bench, part, sections[train_rows], folder), folder,
                    truth)


def run_in(spec: RunSpec, bench: Bench, rotation: Rotation) -> tuple[Run, str, float]:
    """A run in one rotation (05, or 07 over that rotation's members): the run, its choice
    and its seconds (a 05 run's own elapsed time, read back when it was reused)."""
    start = time.perf_counter()
    if spec.members:
        run, choice = run_07(spec, rotation.data, rotation.runs, rotation.folder)
    else:
        run, choice = run_05(spec, bench, rotation.data, rotation.cv, rotation.folder)
    rotation.runs[spec.name] = run
    return run, choice, run.config.get("elapsed_s", time.perf_counter() - start)


def run_bench(bench: Bench, rotations: list[Rotation], only: set[str] | None,
              results: Path) -> list[dict]:
    """Every run over every rotation, run by run (a run's rows are written as soon as it has
    been through every rotation's, so the cheap runs' rows come first)."""
    rows = []
    for spec in needed(bench, only):
        for rotation in rotations:
            run, choice, seconds = run_in(spec, bench, rotation)
            if only is None or spec.name in only:
                rows.append(result_row(bench, spec.name, rotation.held, rotation.truth, run,
                                       choice, seconds))
                append_rows(results, rows[-1:])
                print(pd.DataFrame([rows[-1]])[["run", "section", *METRIC, "cv_score",
                                                "seconds"]].round(4).to_string(index=False),
                      flush=True)
    return rows


def result_row(bench: Bench, name: str, held: str, truth: np.ndarray | None, run: Run,
               choice: str, seconds: float) -> dict:
    """A results row: every metric part on the held-out section (none without one), the run's
    CV headline and range, what it chose, its time, peak memory, machine and versions."""
    parts = score(truth, run.test_pred) if truth is not None else dict.fromkeys(METRIC)
    return {"config": bench.name, "run": name, "section": held,
            **{k: None if parts[k] is None else round(parts[k], 5) for k in METRIC},
            "cv_score": round(run.cv["overall"]["score"], 5),
            "cv_min": round(run.cv["min"]["score"], 5),
            "cv_max": round(run.cv["max"]["score"], 5), "choice": choice,
            "seconds": round(seconds, 1), "peak_rss_gb": peak_rss_gb(), **environment(),
            "source": "benchmarks.heldout"}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a YAML file under benchmarks/configs/")
    parser.add_argument("--data", help="DACON-layout data folder (default: the kit's search)")
    parser.add_argument("--sections", help="CSV of ID → section (default: the config's, in "
                        "the data folder)")
    parser.add_argument("--weights", help="folder of weight files for PRETRAINED true")
    parser.add_argument("--only", nargs="+", help="run names to score (members still train)")
    parser.add_argument("--held", nargs="+", help="sections to hold out (default: every one; "
                        f"{ALL!r}: none, the headline of a run on every section)")
    parser.add_argument("--out", default="runs/heldout", help="where the runs are written")
    parser.add_argument("--results", default=str(RESULTS / "heldout.csv"))
    args = parser.parse_args(argv)
    bench = read_config(args.config)
    bench = replace(bench, weights=args.weights or bench.weights)
    data = load_data(args.data)
    sections = read_sections(data, Path(args.sections or data.root / bench.sections))
    held_out = args.held or sorted(set(sections))
    unknown = sorted(set(held_out) - set(sections) - {ALL})
    if unknown:
        raise SystemExit(f"--held {unknown}: no such section; have {sorted(set(sections))}")
    out = Path(args.out).absolute()
    rotations = [make_rotation(bench, data, sections, held, out) for held in held_out]
    table = pd.DataFrame(run_bench(bench, rotations, set(args.only) if args.only else None,
                                   Path(args.results)))
    if len(table):
        print(table.pivot(index="run", columns="section", values="cv_score").round(4)
              .to_string())
    return table


if __name__ == "__main__":
    main()
