"""Fault drill on the demo set: SIGKILL a stage at a chosen point, rerun it with the same
parameters, and compare its outputs with an uninterrupted run's.

Each stage runs in a fresh Python (as a notebook kernel would) making the notebook's kit calls:
image cache (every notebook), backbone features (05 ridge), fine-tuning (05 finetune, killed in
the middle of epoch 2) and the submission write (07); plus two processes building one cache at
once. Prints one row per fault: what the rerun did, and whether its outputs are identical.

    .venv/bin/python benchmarks/fault_drill.py [--n-train 120] [--n-test 40] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(KIT))

from utils.dev.demo import write_demo  # noqa: E402

PRELUDE = """
import hashlib, os, signal, sys, time
import numpy as np
def die(): os.kill(os.getpid(), signal.SIGKILL)
def digest(*arrays): return hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes()
                                                  for a in arrays)).hexdigest()[:12]
from utils.data import load_data
data = load_data(os.environ["DRILL_DATA"])
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
f = m.cached_features(data, FeatureSpec("test_convnext", False, 64, tta=False), batch_size=16)
print(f"extracted {len(calls)} split(s), loaded {2 - len(calls)} from the cache",
      digest(f["train"], f["test"]))
"""

FINETUNE = """
from utils import train
from utils.config import TrainConfig
cfg = TrainConfig(data_dir=os.environ["DRILL_DATA"], run_dir=os.environ["DRILL_RUN"],
                  recipe="finetune", backbone="test_convnext", pretrained=False, img_size=64,
                  n_folds=2, epochs=2, batch_size=16, patience=None, tta=False)
folds = train.make_cv_folds(cfg, data)
folds = folds[0] if isinstance(folds, tuple) else folds
real, steps, epochs = train.optimizer_step, [], []
def step(*a):
    steps.append(1)
    if KILL and len(steps) == int(os.environ["DRILL_KILL_STEP"]):
        die()
    return real(*a)
real_epoch = train.train_epoch
def epoch(*a, **k):
    epochs.append(1)
    return real_epoch(*a, **k)
train.optimizer_step, train.train_epoch = step, epoch
run = train.train(cfg, data, folds)
print(f"trained {len(epochs)} epochs ({len(steps)} steps)", digest(run.oof, run.test_pred))
"""

SUBMIT = """
import pandas as pd
from utils import ensemble, submit
from utils.paths import read_json
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
before = out.read_bytes() if out.exists() else b""
submit.write_submission(frame, data.sample, out)
print("wrote the CSV" + (" over the previous one" if before else ""),
      hashlib.sha1(out.read_bytes()).hexdigest()[:12])
"""


def run_stage(code: str, env: dict, kill: bool) -> tuple[int, str]:
    """Run one stage in a fresh Python; its return code and last printed line."""
    source = PRELUDE + f"from pathlib import Path\nKILL = {kill}\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", source], cwd=KIT, capture_output=True,
                          text=True, env={**os.environ, **env, "PYTHONPATH": str(KIT)})
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"stage failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def drill(name: str, code: str, work: Path, data: Path, extra: dict | None = None) -> dict:
    """Reference run in one place; killed run then rerun in another; compare the outputs."""
    envs = {}
    for side in ("reference", "faulted"):
        folder = work / name / side
        envs[side] = {"DRILL_DATA": str(data), "KIT_CACHE_DIR": str(folder / "cache"),
                      "DRILL_RUN": str(folder / "run"),
                      "DRILL_SUBMISSION": str(folder / "submission.csv"), **(extra or {})}
    if name == "07 write":  # 07 reads a finished run: reuse the fine-tuning drill's
        for side in envs:
            envs[side]["DRILL_RUN"] = str(work / "fine-tuning epoch" / side / "run")
            envs[side]["KIT_CACHE_DIR"] = str(work / "fine-tuning epoch" / side / "cache")
    _, reference = run_stage(code, envs["reference"], kill=False)
    rc, _ = run_stage(code, envs["faulted"], kill=True)
    half = [p.name for p in (work / name / "faulted").rglob("*") if ".tmp-" in p.name]
    _, rerun = run_stage(code, envs["faulted"], kill=False)
    identical = reference.split()[-1] == rerun.split()[-1]
    return {"fault": name, "killed": "SIGKILL" if rc == -signal.SIGKILL else f"rc {rc}",
            "left behind": f"{len(half)} temporary file(s)" if half else "nothing",
            "rerun did": " ".join(rerun.split()[:-1]), "identical": "yes" if identical else "NO"}


def concurrent(work: Path, data: Path) -> dict:
    """Two processes build one image cache at once; both must read the same complete array."""
    env = {**os.environ, "DRILL_DATA": str(data), "KIT_CACHE_DIR": str(work / "concurrent"),
           "PYTHONPATH": str(KIT)}
    source = PRELUDE + "KILL = False\n" + textwrap.dedent(IMAGES)
    procs = [subprocess.Popen([sys.executable, "-c", source], cwd=KIT, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    _, reference = run_stage(IMAGES, {"DRILL_DATA": str(data),
                                      "KIT_CACHE_DIR": str(work / "concurrent-ref")}, kill=False)
    same = all(o.split()[-1] == reference.split()[-1] for o in outs)
    return {"fault": "two builders at once", "killed": "-", "left behind": "-",
            "rerun did": " / ".join(" ".join(o.split()[:-1]) for o in outs),
            "identical": "yes" if same else "NO"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        data = write_demo(work / "demo", n_train=args.n_train, n_test=args.n_test, n_genes=60,
                          image_size=64, seed=0)
        # half the first unit's train rows at batch 16, in steps per epoch, plus one: epoch 2
        kill_step = str(-(-(args.n_train // 2) // 16) + 1)
        rows = [drill("image cache build", IMAGES, work, data),
                drill("feature extraction", FEATURES, work, data),
                drill("fine-tuning epoch", FINETUNE, work, data, {"DRILL_KILL_STEP": kill_step}),
                drill("07 write", SUBMIT, work, data),
                concurrent(work, data)]
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    print(f"fault drill on the demo set ({args.n_train} train, {args.n_test} test patches)")
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(row[k].ljust(w) for k, w in zip(keys, widths)))


if __name__ == "__main__":
    main()
