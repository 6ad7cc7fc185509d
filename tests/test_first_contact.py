"""First contact, played as a new user: one notebook copied alone into an empty folder and run
with papermill in a fresh virtual environment that has only what Colab and Kaggle bring for it
(ipykernel, papermill, torch, torchvision), on a small demo set with SMOKE = True.

- online: the setup cell clones KIT_REPO (a file:// clone of this kit's HEAD stands in for
  GitHub) and installs the missing requirements from the package index;
- offline: no KIT_REPO, no package index (PIP_NO_INDEX, no pip config); the offline kit built by
  `python -m utils.dev.kaggle` lies under a fake /kaggle/input (KIT_KAGGLE_INPUT) and the cell
  copies its code and installs from its wheels/.

Slow (a venv with torch, the requirements installed twice): marked `first_contact`, left out of
`make test`; `make first-contact` runs them. The base venv (torch, torchvision, papermill,
ipykernel) is built once per session, or reused from FIRST_CONTACT_BASE; each test layers a
fresh venv over it (a .pth file), so nothing a test installs is seen by the other.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from utils.dev.demo import write_demo
from utils.dev.pipeline import demo_parameters
from utils.paths import kit_root

pytestmark = pytest.mark.first_contact
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
PLATFORM = [f"{n}=={metadata.version(n)}" for n in ("torch", "torchvision")]
KEEP_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SSL_CERT_FILE")


def sh(*cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output if it fails."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sysconfig.get_python_version()}" / "site-packages"


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory) -> Path:
    """A venv with only torch, torchvision (the kit venv's versions), papermill and ipykernel."""
    if os.environ.get("FIRST_CONTACT_BASE"):
        return Path(os.environ["FIRST_CONTACT_BASE"])
    venv = tmp_path_factory.mktemp("first-contact") / "base"
    start = time.perf_counter()
    sh(BASE_PYTHON, "-m", "venv", venv)
    sh(venv / "bin" / "python", "-m", "pip", "install", "-q", *PLATFORM, "papermill", "ipykernel")
    print(f"\n[first contact] base venv built in {time.perf_counter() - start:.0f} s")
    return venv


@pytest.fixture(scope="session")
def remote(tmp_path_factory) -> Path:
    """A clone of the kit at HEAD (what the repository host would serve)."""
    clone = tmp_path_factory.mktemp("remote") / "mai-kit"
    sh("git", "clone", "-q", kit_root().as_uri(), clone)
    return clone


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("data") / "demo", n_train=90, n_test=30,
                      n_genes=60, image_size=64, seed=3)


def fresh_venv(base: Path, folder: Path) -> Path:
    """A new venv that sees the base venv's packages through a .pth file (installs go here).
    Without a pip of its own: its bundled setuptools would shadow the one torch was installed
    with, which no platform does; the base's pip installs into this venv."""
    sh(BASE_PYTHON, "-m", "venv", "--without-pip", folder)
    (site_packages(folder) / "platform.pth").write_text(f"{site_packages(base)}\n")
    kernels = folder / "share" / "jupyter"
    sh(folder / "bin" / "python", "-m", "ipykernel", "install", "--prefix", folder,
       "--name", "python3")
    return kernels


def user_env(venv: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the venv first on PATH, no PYTHONPATH, the venv's kernel spec."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update(PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", VIRTUAL_ENV=str(venv),
               JUPYTER_PATH=str(venv / "share" / "jupyter"), HF_HUB_OFFLINE="1",
               KIT_CACHE_DIR=str(venv.parent / "cache"), MPLBACKEND="Agg")
    return {**env, **extra}


def run_notebook(venv: Path, notebook: Path, params: dict, env: dict) -> list[dict]:
    """papermill `notebook` in its own folder with `venv`'s Python; the executed cells."""
    out = notebook.with_name(f"{notebook.stem}.out.ipynb")
    sh(venv / "bin" / "python", "-m", "papermill", notebook, out, "-k", "python3",
       "-y", json.dumps(params), "--cwd", notebook.parent, cwd=notebook.parent, env=env,
       timeout=1800)
    cells = json.loads(out.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    return cells


def setup_output(cell: dict) -> tuple[list[str], float]:
    """The setup cell's printed lines and its duration (papermill's cell metadata)."""
    text = "".join("".join(o["text"]) for o in cell["outputs"] if o.get("name") == "stdout")
    return text.splitlines(), cell["metadata"]["papermill"]["duration"]


def second_run(venv: Path, folder: Path, setup: dict, env: dict) -> tuple[list, float, float]:
    """The setup cell again in a new kernel (kit on disk), then once more in that kernel."""
    nb = {"cells": [dict(setup, outputs=[], execution_count=None, id=f"s{i}") for i in (1, 2)],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "again.ipynb"
    path.write_text(json.dumps(nb))
    cells = run_notebook(venv, path, {}, env)
    (first, t1), (again, t2) = setup_output(cells[0]), setup_output(cells[1])
    return first + again, t1, t2


def test_notebook_alone_clones_the_kit_and_runs(base_venv, remote, demo_data, tmp_path):
    venv = tmp_path / "venv"
    fresh_venv(base_venv, venv)
    user = tmp_path / "user"
    user.mkdir()
    notebook = Path(shutil.copy2(remote / "notebooks" / "05_train.ipynb", user))
    params = demo_parameters(str(demo_data), "runs/first_contact", smoke=True)["05_train"][0]
    env = user_env(venv, KIT_REPO=remote.as_uri(), KIT_KAGGLE_INPUT=str(tmp_path / "none"))
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CERT"):
        if name in os.environ:  # this machine's package index settings (the "internet")
            env[name] = os.environ[name]
    start = time.perf_counter()
    cells = run_notebook(venv, notebook, params, env)
    wall = time.perf_counter() - start
    lines, first = setup_output(next(c for c in cells if c.get("id") == "setup"))
    kit = user / "mai-kit"
    assert len(lines) == 1 and lines[0].startswith(f"kit cloned {remote.as_uri()}: {kit} "
                                                   "(installed "), lines
    assert "from PyPI" in lines[0] and "timm" in lines[0] and "torch" not in lines[0]
    runs = sorted((kit / "runs").rglob("cv.json"))
    assert runs, f"no cv.json under {kit / 'runs'}"
    cv = json.loads(runs[0].read_text())
    assert 0.0 < cv["overall"]["score"] < 1.0 and (runs[0].parent / "test_pred.npy").is_file()
    installed = sh(venv / "bin" / "python", "-c", "import torch; print(torch.__file__)").stdout
    assert str(site_packages(base_venv)) in installed  # the platform's torch was kept
    again, t_new_kernel, t_same_kernel = second_run(venv, user, cells[[c.get("id") for c in
                                                                       cells].index("setup")],
                                                    env)
    assert again == [f"kit found in {kit}: {kit} (requirements present)",
                     f"kit importable: {kit} (requirements present)"]
    assert t_new_kernel < 10 and t_same_kernel < 1
    print(f"\n[first contact] online: setup cell {first:.1f} s first run, {t_new_kernel:.2f} s "
          f"in a new kernel, {t_same_kernel:.3f} s in the same kernel; notebook {wall:.0f} s")


def test_notebook_alone_installs_from_the_offline_kit(base_venv, remote, demo_data, tmp_path):
    venv = tmp_path / "venv"
    fresh_venv(base_venv, venv)
    dataset = tmp_path / "input" / "mai-kit-offline"
    start = time.perf_counter()
    sh(sys.executable, "-m", "utils.dev.kaggle", "--out", dataset, "--has", "",
       "--python-version", sysconfig.get_python_version(), cwd=remote)
    built = time.perf_counter() - start
    user = tmp_path / "user"
    user.mkdir()
    notebook = Path(shutil.copy2(remote / "notebooks" / "01_eda.ipynb", user))
    params = demo_parameters(str(demo_data), "runs/first_contact", smoke=True)["01_eda"]
    env = user_env(venv, PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
                   KIT_KAGGLE_INPUT=str(tmp_path / "input"))
    start = time.perf_counter()
    cells = run_notebook(venv, notebook, params, env)
    wall = time.perf_counter() - start
    lines, first = setup_output(next(c for c in cells if c.get("id") == "setup"))
    kit = user / "mai-kit"
    assert len(lines) == 1 and lines[0].startswith(
        f"kit found in {dataset}: {kit} (installed "), lines
    assert f"from {dataset / 'wheels'}" in lines[0]
    out = kit / "runs" / "smoke" / "first_contact" / "eda"  # SMOKE = True writes apart
    assert {"gene_stats.csv", "config.json"} <= {p.name for p in out.iterdir()}, out
    assert not (dataset / "runs").exists()  # the dataset is only read
    size = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file()) / 1e6
    print(f"\n[first contact] offline: kit built in {built:.0f} s ({size:.0f} MB with every "
          f"requirement), setup cell {first:.1f} s, notebook {wall:.0f} s")
