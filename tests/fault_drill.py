"""Fault drill on the demo set: SIGKILL a stage at a chosen point, rerun it with the same
parameters, and compare its outputs with an uninterrupted run's.

Each stage runs in a fresh Python (as a notebook kernel would) making the notebook's kit calls:
the image cache (every notebook), backbone features (05 ridge), fine-tuning (05 finetune, killed
at the first step of epoch 2), the run files (05, killed half-way through `test_pred.npy` while
OVERWRITE=True replaces an earlier run) and the submission CSV (07, killed half-way through);
plus two processes building one cache at once. One row per fault: what was left on disk after
the kill, what the rerun did, and whether its outputs are identical to the uninterrupted run's.
`tests/test_fault_drill.py` runs it (marked slow; `pytest -s` prints the table).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent
if str(KIT) not in sys.path:
    sys.path.insert(0, str(KIT))

from utils.dev.demo import write_demo  # noqa: E402

PRELUDE = """
import hashlib, os, signal, sys, time
from pathlib import Path
import numpy as np
def die(): os.kill(os.getpid(), signal.SIGKILL)
def digest(*arrays): return hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes()
                                                  for a in arrays)).hexdigest()[:12]
from utils.data import load_data
data = load_data(os.environ["DRILL_DATA"])
IMG = int(os.environ["DRILL_IMG"])
"""

IMAGES = """
import utils.data as d
real, calls = d.decode_image, []
def decode(*args):
    calls.append(1)
    if KILL and len(calls) == len(data.train) // 2:
        die()
    return real(*args)
d.decode_image = decode
images = d.load_images(data, "train", workers=1)
print(f"decoded {len(calls)} patches", digest(images))
"""

FEATURES = """
import utils.features as m
from utils.config import FeatureSpec
real, calls = m.extract_features, []
def extract(model, images, *args, **kwargs):
    calls.append(len(images))
    if KILL and len(images) == len(data.test):
        die()  # train features are saved; test dies in the middle of its extraction
    return real(model, images, *args, **kwargs)
m.extract_features = extract
f = m.cached_features(data, FeatureSpec("test_convnext", False, IMG, tta=False), batch_size=16)
print(f"extracted {len(calls)} split(s), loaded {2 - len(calls)} from the cache",
      digest(f["train"], f["test"]))
"""

FINETUNE = """
from utils import train
from utils.config import TrainConfig
cfg = TrainConfig(data_dir=os.environ["DRILL_DATA"], run_dir=os.environ["DRILL_RUN"],
                  recipe="finetune", backbone="test_convnext", pretrained=False, img_size=IMG,
                  n_folds=2, epochs=2, batch_size=16, patience=None, tta=False)
folds, _ = train.make_cv_folds(cfg, data)
from utils import loop
real, steps, epochs = loop.optimizer_step, [], []
def step(*a):
    steps.append(1)
    if KILL and len(epochs) == 2:  # the first step of the first unit's epoch 2
        die()
    return real(*a)
real_epoch = loop.train_epoch
def epoch(*a, **k):
    epochs.append(1)
    return real_epoch(*a, **k)
loop.optimizer_step, loop.train_epoch = step, epoch
run = train.train(cfg, data, folds)
print(f"trained {len(epochs)} epochs ({len(steps)} steps)", digest(run.oof, run.test_pred))
"""

RIDGE = """
from utils import runs, train
from utils.config import TrainConfig
from utils.files import save_npy
def config(alphas, overwrite):
    return TrainConfig(data_dir=os.environ["DRILL_DATA"], run_dir=os.environ["DRILL_RUN"],
                       recipe="ridge", backbone="test_convnext", pretrained=False, img_size=IMG,
                       tta=False, alphas=alphas, overwrite=overwrite)
if KILL:  # an earlier run in the folder, which OVERWRITE=True replaces
    folds, _ = train.make_cv_folds(config((10.0,), False), data)
    train.train(config((10.0,), False), data, folds)
def half_then_die(path, array):
    if Path(path).name != "test_pred.npy":
        return save_npy(path, array)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}.npy")
    save_npy(tmp, array)
    with open(tmp, "r+b") as f:
        f.truncate(tmp.stat().st_size // 2)
    die()
if KILL:
    runs.save_npy = half_then_die
cfg = config((1.0, 100.0, 10000.0), True)  # a killed OVERWRITE keeps the old run: rerun it
folds, _ = train.make_cv_folds(cfg, data)
run = train.train(cfg, data, folds)
print(f"trained the ridge run (alpha {run.config['details']['alpha']:g})",
      digest(run.folds, run.oof, run.test_pred, (Path(run.path) / "cv.json").read_bytes()))
"""

SUBMIT = """
import pandas as pd
from utils import submit
from utils.runs import load_run
run = load_run(os.environ["DRILL_RUN"])
frame = submit.make_submission(run.test_pred, data.test["ID"].tolist(), data.sample)
real = pd.DataFrame.to_csv
def half_then_die(self, path, **kw):
    real(self, path, **kw)
    if KILL:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        die()
pd.DataFrame.to_csv = half_then_die
out = Path(os.environ["DRILL_SUBMISSION"])
out.parent.mkdir(parents=True, exist_ok=True)
if KILL:
    out.write_text("an earlier submission\\n")
before = out.read_bytes() if out.exists() else b""
submit.write_submission(frame, data.sample, out)
print("wrote the CSV" + (" over the earlier one" if before else ""),
      hashlib.sha1(out.read_bytes()).hexdigest()[:12])
"""

# fault → (stage code, which stage's run folder it reads: 07 reads a finished 05 run)
STAGES = {"image cache build": (IMAGES, None), "feature extraction": (FEATURES, None),
          "fine-tuning epoch": (FINETUNE, None), "writing test_pred.npy": (RIDGE, None),
          "writing the CSV": (SUBMIT, "writing test_pred.npy")}


def run_stage(code: str, env: dict, kill: bool) -> tuple[int, str]:
    """Run one stage in a fresh Python; its return code and last printed line."""
    source = PRELUDE + f"KILL = {kill}\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", source], cwd=KIT, capture_output=True,
                          text=True, env={**os.environ, **env, "PYTHONPATH": str(KIT),
                                          "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"})
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"stage failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def stage_env(work: Path, name: str, side: str, data: Path, img: int) -> dict:
    """Where one side ("reference" or "faulted") of a stage keeps its cache, run and CSV."""
    folder = work / name.replace(" ", "_") / side
    return {"DRILL_DATA": str(data), "DRILL_IMG": str(img),
            "KIT_CACHE_DIR": str(folder / "cache"), "DRILL_RUN": str(folder / "run"),
            "DRILL_SUBMISSION": str(folder / "submission.csv")}


def on_disk(folder: Path, env: dict) -> str:
    """What a killed stage left: temporary files, and whether its run folder looks finished."""
    from utils.runs import is_complete

    half = [p.name for p in folder.rglob("*") if ".tmp-" in p.name]
    parts = [f"{len(half)} temporary file(s), never renamed into place" if half
             else "no temporary file"]
    if Path(env["DRILL_RUN"]).is_dir() and Path(env["DRILL_RUN"]).parent == folder:
        parts.append(f"run finished: {'YES' if is_complete(env['DRILL_RUN']) else 'no'}")
    csv = Path(env["DRILL_SUBMISSION"])
    if csv.is_file():
        parts.append("CSV: the earlier one" if csv.read_text().startswith("an earlier")
                     else "CSV: another file")
    return "; ".join(parts)


def drill(name: str, work: Path, data: Path, img: int) -> dict:
    """Reference run in one place; killed run, then rerun, in another; compare the outputs."""
    code, reads = STAGES[name]
    envs = {side: stage_env(work, name, side, data, img) for side in ("reference", "faulted")}
    if reads:  # a later notebook reads an earlier stage's finished run
        for side, env in envs.items():
            env.update({k: stage_env(work, reads, side, data, img)[k]
                        for k in ("DRILL_RUN", "KIT_CACHE_DIR")})
    _, reference = run_stage(code, envs["reference"], kill=False)
    rc, _ = run_stage(code, envs["faulted"], kill=True)
    left = on_disk(work / name.replace(" ", "_") / "faulted", envs["faulted"])
    _, rerun = run_stage(code, envs["faulted"], kill=False)
    identical = reference.split()[-1] == rerun.split()[-1]
    return {"fault": f"SIGKILL during {name}",
            "killed": "SIGKILL" if rc == -signal.SIGKILL else f"rc {rc}",
            "on disk after": left, "rerun did": " ".join(rerun.split()[:-1]),
            "identical": "yes" if identical else "NO"}


def concurrent(work: Path, data: Path, img: int) -> dict:
    """Two processes build one image cache at once; both must read the same complete array."""
    env = {**os.environ, **stage_env(work, "concurrent", "both", data, img),
           "PYTHONPATH": str(KIT)}
    source = PRELUDE + "KILL = False\n" + textwrap.dedent(IMAGES)
    procs = [subprocess.Popen([sys.executable, "-c", source], cwd=KIT, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    _, reference = run_stage(IMAGES, stage_env(work, "concurrent", "reference", data, img),
                             kill=False)
    same = all(o.split()[-1] == reference.split()[-1] for o in outs)
    return {"fault": "two processes build one cache", "killed": "-", "on disk after": "-",
            "rerun did": " / ".join(" ".join(o.split()[:-1]) for o in outs),
            "identical": "yes" if same else "NO"}


def run_drill(work: Path, n_train: int = 120, n_test: int = 40, img: int = 64,
              stages: list[str] | None = None) -> list[dict]:
    """Every fault of STAGES (or those named) on a fresh demo set under `work`, then two
    concurrent cache builders: one row per fault."""
    data = write_demo(work / "demo", n_train=n_train, n_test=n_test, n_genes=60,
                      image_size=img, seed=0)
    names = stages or list(STAGES)
    for name in names:  # a stage that reads another's run needs that stage first
        reads = STAGES[name][1]
        if reads and reads not in names:
            raise ValueError(f"stage {name!r} reads the run of {reads!r}: list it too")
    rows = [drill(name, work, data, img) for name in names]
    return rows + ([concurrent(work, data, img)] if stages is None else [])


def format_table(rows: list[dict]) -> str:
    """The rows as a plain text table."""
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(row[k].ljust(w) for k, w in zip(keys, widths)) for row in rows]
    return "\n".join(lines)
