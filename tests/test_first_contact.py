"""First contact, played as a new user: the kit's own commands, fresh virtual environments, one
notebook copied alone into an empty folder and run top to bottom with SMOKE = True.

- the bundle: `python -m utils.dev.bundle` builds it from a clean clone of this kit's HEAD (for
  Colab's and Kaggle's Pythons, and with every wheel for this Python); a fresh venv holding only
  torch/torchvision and a Jupyter kernel, **with the network blocked** (proxy variables pointing
  at a closed port, `PIP_NO_INDEX`, no pip configuration), finds the zip beside the notebook,
  installs from its wheels and runs 05_train, then 04_adapt (which installs lightly — with
  hydra-core and the antlr4 wheel built from a source archive — from the bundle on first use);
- a Colab-like runtime: a fresh venv pinned to a current Colab image's versions (`COLAB_PINS`);
  the setup cell clones `KIT_REPO` (a file:// clone stands in for GitHub) and installs what is
  missing from the package index; `pip freeze` shows every package it had unchanged;
- the Pythons Colab and Kaggle run next (3.12, 3.13; pyenv's): a venv with a Colab-like set
  (`COLAB_LIKE`: what the bundle leaves to the platform, at versions with wheels for that Python)
  and the kit as GitHub's zip in /content (a temporary platform root): online the setup cell
  installs the rest from the index and changes no pinned version; offline it installs from the
  bundle, and with a bundle lacking one cp313 wheel it names the package, the Python and the
  build command, and takes that wheel from the index once the internet is back;
- 00_quickstart on Kaggle's layout with a real torch (PyPI's CUDA build) on Python 3.13 and 3.10:
  a runtime venv per Python (torch, `COLAB_LIKE`, a kernel; about 6 GB, built once under
  `$KIT_PLATFORM_VENVS`, default ~/.cache/mai-kit/platform-venvs), the notebook alone in
  /kaggle/working, GitHub's zip and a DACON-layout demo set attached as datasets: Run All
  (online) writes a valid submission.csv and leaves the runtime's packages as they were.

torch/torchvision (and what they need) are the platform's, as on Colab and Kaggle, and nothing
may replace them: this venv's own, linked into each fresh venv through a .pth file; in the
3.12/3.13 venvs that run the setup cell only, metadata-only stand-ins at Colab's versions (this
venv's torch is built for its own Python; the cell never imports torch); for 00_quickstart, the
runtime venv's, seen through a .pth file in the same way.
Marked `first_contact` (minutes): `make first-contact` runs them, `make test` does not.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import KIT_ROOT, build_bundle
from packaging.requirements import Requirement

from utils.bootstrap import canonical
from utils.data import load_data
from utils.dev.demo import write_demo
from utils.dev.pipeline import DEMO_MODEL, demo_parameters
from utils.dev.publish import setup_source
from utils.submit import validate_submission

pytestmark = pytest.mark.first_contact
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
PYTHON = sysconfig.get_python_version()
# A current Colab image (2025): its numpy, pandas and matplotlib, and the older ipykernel (and
# the IPython it runs) that Colab's frontend depends on. None may change under the setup cell.
COLAB_PINS = ("ipykernel==6.17.1", "ipython==7.34.0", "numpy==2.0.2", "pandas==2.2.2",
              "matplotlib==3.10.0")
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection is refused
BLOCKED = {"HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "http_proxy": CLOSED,
           "https_proxy": CLOSED, "ALL_PROXY": CLOSED, "all_proxy": CLOSED, "NO_PROXY": "",
           "no_proxy": "", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "3", "GIT_TERMINAL_PROMPT": "0"}
KERNEL = "first-contact"


def sh(*cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output if it fails."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def platform_closure(roots=("torch", "torchvision"), leave_out=()) -> list[metadata.Distribution]:
    """The installed distributions `roots` need (markers and requested extras evaluated)."""
    todo, seen, dists = [Requirement(r) for r in roots], set(), []
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen or name in {canonical(n) for n in leave_out}:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        dists.append(dist)
        for dep in map(Requirement, dist.requires or []):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in ["", *req.extras]):
                todo.append(dep)
    return dists


def link_platform(folder: Path, leave_out=()) -> Path:
    """A folder of links to torch, torchvision and their dependencies in this venv."""
    folder.mkdir(parents=True)
    for dist in platform_closure(leave_out=leave_out):
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


def fresh_venv(folder: Path, pins=(), leave_out=()) -> Path:
    """A new venv: the platform linked in, a Jupyter kernel (and `pins`) installed from the index
    before any network is blocked, a kernel spec named KERNEL. Returns its python."""
    start = time.perf_counter()
    sh(BASE_PYTHON, "-m", "venv", folder / "venv")
    python = folder / "venv" / "bin" / "python"
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())
    platform = link_platform(folder / "platform", leave_out)
    sh(python, "-m", "pip", "uninstall", "-q", "-y", "setuptools")  # the platform's is linked
    (site / "platform.pth").write_text(f"{platform}\n")
    sh(python, "-m", "pip", "install", "-q", "ipykernel", *pins)
    sh(python, "-m", "ipykernel", "install", "--prefix", folder / "venv", "--name", KERNEL)
    print(f"\n[first contact] venv {folder.name}: {time.perf_counter() - start:.0f} s")
    return python


def user_env(python: Path, **extra: str) -> dict[str, str]:
    """A clean environment for papermill and the kernel: no PYTHONPATH, the venv's kernel spec,
    the kit's caches in the user's folder; `extra` on top."""
    venv = python.parent.parent
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER") if k in
           os.environ}
    env.update(PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", VIRTUAL_ENV=str(venv),
               JUPYTER_PATH=str(venv / "share" / "jupyter"), HF_HUB_OFFLINE="1",
               MPLBACKEND="Agg", NO_ALBUMENTATIONS_UPDATE="1",
               KIT_CACHE_DIR=str(venv.parent / "cache"),
               KIT_PLATFORM_ROOT=str(venv.parent / "no-platform-folders"))
    return {**env, **extra}


def online(env: dict[str, str]) -> dict[str, str]:
    """`env` with this machine's package-index settings (the "internet")."""
    keep = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CERT",
            "PIP_DEFAULT_TIMEOUT", "SSL_CERT_FILE")
    return {**env, **{k: os.environ[k] for k in keep if k in os.environ}}


def run_notebook(notebook: Path, params: dict, env: dict) -> list[dict]:
    """papermill `notebook` in its own folder with the venv's kernel; the executed cells."""
    out = notebook.with_name(f"{notebook.stem}.out.ipynb")
    sh(sys.executable, "-m", "papermill", notebook, out, "-k", KERNEL, "-y", json.dumps(params),
       "--cwd", notebook.parent, cwd=notebook.parent, env=env, timeout=1800)
    cells = json.loads(out.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    return cells


def cell_text(cell: dict) -> str:
    return "".join("".join(o["text"]) for o in cell.get("outputs", [])
                   if o.get("name") == "stdout")


def setup_output(cells: list[dict]) -> tuple[list[str], float]:
    """The setup cell's printed lines and its duration (papermill's cell metadata)."""
    cell = next(c for c in cells if c.get("id") == "setup")
    return cell_text(cell).splitlines(), cell["metadata"]["papermill"]["duration"]


def setup_again(folder: Path, cells: list[dict], env: dict) -> tuple[list[str], float, float]:
    """The setup cell in a new kernel (the kit now on disk), then once more in that kernel."""
    setup = next(c for c in cells if c.get("id") == "setup")
    nb = {"cells": [dict(setup, outputs=[], execution_count=None, id=f"s{i}") for i in (1, 2)],
          "metadata": {"kernelspec": {"name": KERNEL, "display_name": KERNEL,
                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "again.ipynb"
    path.write_text(json.dumps(nb))
    again = run_notebook(path, {}, env)
    durations = [c["metadata"]["papermill"]["duration"] for c in again]
    return [line for c in again for line in cell_text(c).splitlines()], *durations


def freeze(python: Path) -> list[str]:
    return sorted(sh(python, "-m", "pip", "freeze", "--all").stdout.splitlines())


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("data") / "demo", n_train=90, n_test=30,
                      n_genes=60, image_size=64, seed=3)


def test_the_bundle_offline_runs_a_notebook_alone_in_a_fresh_venv(kit_clone, demo_data, tmp_path):
    bundle, built = build_bundle(kit_clone, tmp_path / "bundle.zip", "--has", "none",
                                 "--python", PYTHON)
    python = fresh_venv(tmp_path)
    before = freeze(python)
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy2(bundle, user / "mai-kit-bundle.zip")  # downloaded beside the notebook
    notebook = Path(shutil.copy2(kit_clone / "notebooks" / "05_train.ipynb", user))
    env = user_env(python, **BLOCKED)
    reach = "import urllib.request as u; u.urlopen('https://pypi.org/simple/six/', timeout=5)"
    refused = subprocess.run([python, "-c", reach], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "Connection refused" in refused.stderr  # blocked
    params = demo_parameters(str(demo_data), "runs/first_contact", smoke=True)
    start = time.perf_counter()
    cells = run_notebook(notebook, params["05_train"][0], env)
    wall = time.perf_counter() - start
    lines, first = setup_output(cells)
    kit = user / "mai-kit"
    assert len(lines) == 1 and lines[0].startswith(
        f"mai-kit found in {user / 'mai-kit-bundle.zip'}: {kit} [bundle "), lines
    assert re.search(r"\(installed \d+ from the bundle in \d+ s: .*timm", lines[0]), lines
    cv = json.loads((kit / "runs" / "smoke" / "first_contact" / "ridge" / "cv.json").read_text())
    assert 0.0 < cv["overall"]["score"] < 1.0
    again, t_kernel, t_same = setup_again(user, cells, env)
    assert len(again) == 2 and again[0].startswith(
        f"mai-kit found in {user / 'mai-kit-bundle.zip'}: {kit} [bundle ")
    assert again[1].startswith(f"mai-kit importable: {kit} [bundle ")
    assert all(line.endswith("(requirements present)") for line in again), again
    adapt = Path(shutil.copy2(kit_clone / "notebooks" / "04_adapt.ipynb", user))
    cells = run_notebook(adapt, params["04_adapt"], env)
    text = "".join(cell_text(c) for c in cells)
    lazy = re.search(r"04_adapt's OBJECTIVE needs lightly>=1\.5: installing it from the bundle "
                     r"… done in (\d+) s", text)
    assert lazy, text[:2000]
    assert (kit / "runs" / "smoke" / "first_contact" / "adapt" / "config.json").is_file()
    after = freeze(python)
    assert set(before) <= set(after)  # added, never changed: torch, numpy, ipykernel, ...
    print(f"[first contact] offline: bundle (every wheel, Python {PYTHON}) "
          f"{bundle.stat().st_size / 1e6:.0f} MB built in {built:.0f} s; setup cell {first:.1f} s"
          f" first run, {t_kernel:.2f} s in a new kernel, {t_same:.3f} s in the same kernel; "
          f"05_train SMOKE notebook {wall:.0f} s; 04_adapt installed lightly from the bundle in "
          f"{lazy.group(1)} s")


def test_a_colab_like_runtime_keeps_every_version_it_had(kit_clone, demo_data, tmp_path):
    python = fresh_venv(tmp_path, COLAB_PINS, leave_out=("numpy", "pillow"))
    before = freeze(python)
    assert {p.replace("_", "-") for p in COLAB_PINS} <= {b.lower() for b in before}, before
    user = tmp_path / "user"
    user.mkdir()
    notebook = Path(shutil.copy2(kit_clone / "notebooks" / "01_eda.ipynb", user))
    env = online(user_env(python, KIT_REPO=kit_clone.as_uri()))
    params = demo_parameters(str(demo_data), "runs/first_contact", smoke=True)["01_eda"]
    start = time.perf_counter()
    cells = run_notebook(notebook, params, env)
    wall = time.perf_counter() - start
    lines, first = setup_output(cells)
    kit = user / "mai-kit"
    assert len(lines) == 1 and lines[0].startswith(f"mai-kit cloned {kit_clone.as_uri()}: {kit} "
                                                   "[checkout] (installed "), lines
    assert "from PyPI" in lines[0] and "torch" not in lines[0].split(":", 2)[2]
    after = freeze(python)
    changed = sorted(set(before) - set(after))
    assert not changed, f"the setup cell changed what the runtime had: {changed}"
    assert (kit / "runs" / "smoke" / "first_contact" / "eda" / "gene_stats.csv").is_file()
    again, t_kernel, t_same = setup_again(user, cells, env)
    assert again == [f"mai-kit found in {kit}: {kit} [checkout] (requirements present)",
                     f"mai-kit importable: {kit} [checkout] (requirements present)"]
    print(f"[first contact] Colab-like ({', '.join(COLAB_PINS)}): unchanged; setup cell "
          f"{first:.1f} s first run (clone + PyPI), {t_kernel:.2f} s in a new kernel, "
          f"{t_same:.3f} s in the same kernel; 01_eda SMOKE notebook {wall:.0f} s")


# --- Python 3.12 and 3.13 ----------------------------------------------------------------------

# A Colab-like runtime per Python: what the bundle leaves to the platform (bundle.PLATFORMS_HAVE,
# as far as the kit's requirements reach it), pinned. 3.12 (and 3.10, which has wheels of them
# all): versions of Colab's 2025 image; 3.13: the nearest versions with cp313 wheels (numba 0.61
# needs numpy <= 2.1).
SHARED_PINS = ("scikit-image==0.25.2", "pillow==11.1.0", "matplotlib==3.10.0",
               "opencv-python==4.11.0.86", "opencv-python-headless==4.11.0.86", "pyyaml==6.0.2",
               "psutil==5.9.5", "requests==2.32.3", "packaging==24.2", "pydantic==2.10.6",
               "huggingface-hub==0.28.1", "tqdm==4.67.1", "scikit-learn==1.6.1")
COLAB_2025 = ("numpy==2.0.2", "pandas==2.2.2", "scipy==1.14.1", "numba==0.60.0",
              "llvmlite==0.43.0", *SHARED_PINS)
COLAB_LIKE = {
    "3.10": COLAB_2025,
    "3.12": COLAB_2025,
    "3.13": ("numpy==2.1.3", "pandas==2.2.3", "scipy==1.15.2", "numba==0.61.0",
             "llvmlite==0.44.0", *SHARED_PINS),
}
STAND_INS = {"torch": "2.8.0", "torchvision": "0.23.0"}  # Colab's (late 2025), metadata only
LACKING = "ruptures"  # the compiled wheel taken out of the bundle's cp313 wheels


def pyenv_python(version: str) -> Path:
    """pyenv's interpreter of `version` (skips the test when there is none)."""
    found = sorted(Path(sys.base_prefix).parent.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no Python {version} beside {sys.base_prefix}")
    return found[0]


def stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel holding only `name`'s metadata at `version` (and an empty package)."""
    info = f"{name}-{version}.dist-info"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"{name}/__init__.py": f"__version__ = {version!r}  # a stand-in\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)
    return wheel


def colab_like_venv(folder: Path, version: str) -> Path:
    """A venv of pyenv's Python `version` with the stand-ins and COLAB_LIKE installed (from the
    index, before any network is blocked). Returns its python."""
    start = time.perf_counter()
    sh(pyenv_python(version), "-m", "venv", folder / "venv")
    python = folder / "venv" / "bin" / "python"
    wheels = [stand_in_wheel(folder / "stand-ins", n, v) for n, v in STAND_INS.items()]
    sh(python, "-m", "pip", "install", "-q", "--no-deps", *wheels)
    sh(python, "-m", "pip", "install", "-q", *COLAB_LIKE[version], timeout=1200)
    print(f"\n[first contact] Colab-like Python {version} venv: "
          f"{time.perf_counter() - start:.0f} s")
    return python


def run_setup_cell(python: Path, root: Path, env: dict) -> tuple[subprocess.CompletedProcess,
                                                                float]:
    """The setup cell in /content of the platform root `root`, as a fresh kernel runs it."""
    start = time.perf_counter()
    done = subprocess.run([python, "-c", setup_source()], cwd=root / "content",
                          capture_output=True, text=True, timeout=1800,
                          env={**env, "KIT_PLATFORM_ROOT": str(root)})
    return done, time.perf_counter() - start


def bare_env(python: Path) -> dict[str, str]:
    """No PYTHONPATH, no pip settings of this machine: the venv's Python alone, offline."""
    venv = python.parent.parent
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
           if k in os.environ}
    return {**env, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), **BLOCKED}


def online_env(python: Path) -> dict[str, str]:
    """`bare_env` with the internet back."""
    env = {k: v for k, v in bare_env(python).items() if k not in BLOCKED}
    return online(env)


def changed(before: list[str], after: list[str]) -> list[str]:
    return sorted(set(before) - set(after))


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_the_setup_cell_online_on_a_new_python_changes_no_pinned_version(github_zip, tmp_path,
                                                                         version):
    python = colab_like_venv(tmp_path, version)
    before = freeze(python)
    root = tmp_path / "platform"
    shutil.copy2(github_zip, (root / "content").mkdir(parents=True) or root / "content")
    done, seconds = run_setup_cell(python, root, online_env(python))
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip()
    assert line.startswith(f"mai-kit found in {root / 'content' / github_zip.name}: "), line
    assert re.search(r"\(installed \d+ from PyPI in \d+ s: .*timm", line), line
    assert not changed(before, freeze(python)), "the setup cell changed what the runtime had"
    again, seconds_again = run_setup_cell(python, root, online_env(python))
    assert again.stdout.strip().endswith("(requirements present)"), again.stdout
    print(f"[first contact] Python {version} online (GitHub's zip, PyPI): setup cell "
          f"{seconds:.0f} s first run, {seconds_again:.1f} s in a new kernel; pins unchanged")


@pytest.fixture(scope="module")
def bundles(kit_clone, tmp_path_factory) -> dict[str, Path]:
    """The bundle for Python 3.12 and 3.13, whole and without LACKING's cp313 wheel."""
    folder = tmp_path_factory.mktemp("bundles")
    whole, _ = build_bundle(kit_clone, folder / "whole" / "mai-kit-bundle.zip", "--python",
                            "3.12", "3.13")
    lacking = folder / "lacking" / "mai-kit-bundle.zip"
    lacking.parent.mkdir()
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(lacking, "w") as dst:
        left_out = [n for n in src.namelist() if Path(n).name.startswith(f"{LACKING}-")
                    and "-cp313-" in n]
        assert len(left_out) == 1, left_out
        for info in src.infolist():
            if info.filename not in left_out:
                dst.writestr(info, src.read(info))
    return {"whole": whole, "lacking": lacking}


def test_the_setup_cell_offline_on_python_312_installs_from_the_bundle(bundles, tmp_path):
    python = colab_like_venv(tmp_path, "3.12")
    before = freeze(python)
    root = tmp_path / "platform"
    shutil.copy2(bundles["lacking"], (root / "content").mkdir(parents=True) or root / "content")
    done, seconds = run_setup_cell(python, root, bare_env(python))  # lacks a cp313 wheel only
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\(installed \d+ from the bundle in \d+ s: ", done.stdout), done.stdout
    assert not changed(before, freeze(python))
    print(f"[first contact] Python 3.12 offline (the bundle): setup cell {seconds:.0f} s")


def test_the_setup_cell_offline_on_python_313_names_the_wheel_the_bundle_lacks(bundles,
                                                                                tmp_path):
    python = colab_like_venv(tmp_path, "3.13")
    before = freeze(python)
    root = tmp_path / "platform"
    content = root / "content"
    content.mkdir(parents=True)
    shutil.copy2(bundles["lacking"], content)
    done, failed = run_setup_cell(python, root, bare_env(python))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (f"has no wheel of {LACKING} for Python 3.13" in done.stderr
            and "python -m utils.dev.bundle --python 3.13" in done.stderr), done.stderr
    assert freeze(python) == before
    done, fallback = run_setup_cell(python, root, online_env(python))  # the internet is back
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\(installed \d+ from the bundle and PyPI in \d+ s: .*ruptures",
                     done.stdout), done.stdout
    assert not changed(before, freeze(python))
    print(f"[first contact] Python 3.13 offline, a bundle lacking the cp313 {LACKING} wheel: "
          f"stopped in {failed:.0f} s naming it; online: bundle + PyPI in {fallback:.0f} s; pins "
          "unchanged")


def test_the_whole_bundle_offline_on_python_313(bundles, tmp_path):
    python = colab_like_venv(tmp_path, "3.13")
    before = freeze(python)
    root = tmp_path / "platform"
    shutil.copy2(bundles["whole"], (root / "content").mkdir(parents=True) or root / "content")
    done, seconds = run_setup_cell(python, root, bare_env(python))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\(installed \d+ from the bundle in \d+ s: ", done.stdout), done.stdout
    assert not changed(before, freeze(python))
    print(f"[first contact] Python 3.13 offline (the whole bundle): setup cell {seconds:.0f} s")


# --- 00_quickstart on Kaggle's layout, a real torch on Python 3.13 and 3.10 ---------------------

# The newest pair with wheels for both Pythons (CUDA builds from PyPI, about 5.5 GB a venv).
PLATFORM_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PLATFORM_VENVS = Path(os.environ.get("KIT_PLATFORM_VENVS")
                      or Path.home() / ".cache" / "mai-kit" / "platform-venvs")


def platform_venv(version: str) -> Path:
    """A Kaggle-like runtime of pyenv's Python `version`: a venv with a real torch, COLAB_LIKE and
    a kernel, built once under $KIT_PLATFORM_VENVS (skips when pip cannot). Returns its python."""
    venv = PLATFORM_VENVS / f"py{version.replace('.', '')}"
    python, frozen = venv / "bin" / "python", venv / "platform-freeze.txt"
    if frozen.is_file():
        return python
    start = time.perf_counter()
    if not python.exists():
        sh(pyenv_python(version), "-m", "venv", venv)
    pip = subprocess.run([python, "-m", "pip", "install", "-q", *PLATFORM_TORCH, "ipykernel",
                          *COLAB_LIKE[version]], capture_output=True, text=True, timeout=3600)
    if pip.returncode:
        pytest.skip(f"pip could not build the Python {version} runtime in {venv} (no package "
                    f"index, or no wheel of {', '.join(PLATFORM_TORCH)}): {pip.stderr[-500:]}")
    frozen.write_text("\n".join(freeze(python)) + "\n")
    print(f"\n[first contact] Python {version} runtime with {', '.join(PLATFORM_TORCH)} built "
          f"in {venv}: {time.perf_counter() - start:.0f} s")
    return python


def user_venv(folder: Path, platform: Path) -> Path:
    """A venv of `platform`'s Python that sees `platform`'s packages (its pip included) through a
    .pth file, so what the setup cell installs lands here; a kernel spec named KERNEL."""
    sh(platform.resolve(), "-m", "venv", "--without-pip", folder)
    python = folder / "bin" / "python"
    site = sh(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    base = sh(platform, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    (Path(site.stdout.strip()) / "platform.pth").write_text(base.stdout)
    sh(python, "-m", "ipykernel", "install", "--prefix", folder, "--name", KERNEL)
    return python


def kaggle_layout(root: Path, kit_zip: Path) -> tuple[Path, Path, Path]:
    """/kaggle/working holding only 00_quickstart, GitHub's zip as one dataset and a DACON-layout
    demo set as another; (the notebook, the zip, the data folder)."""
    work = root / "kaggle" / "working"
    work.mkdir(parents=True)
    datasets = root / "kaggle" / "input" / "datasets" / "someone"
    (datasets / "mai-kit").mkdir(parents=True)
    attached = Path(shutil.copy2(kit_zip, datasets / "mai-kit" / "mai-kit-main.zip"))
    data = write_demo(datasets / "dacon-mai" / "open", n_train=120, n_test=40, n_genes=200,
                      seed=3)
    notebook = Path(shutil.copy2(KIT_ROOT / "notebooks" / "00_quickstart.ipynb", work))
    return notebook, attached, data


@pytest.mark.parametrize("version", ["3.13", "3.10"])
def test_the_quickstart_on_kaggle_with_a_real_torch_on_a_new_python(github_zip, tmp_path,
                                                                     version):
    platform = platform_venv(version)
    python = user_venv(tmp_path / "venv", platform)
    notebook, attached, data = kaggle_layout(tmp_path / "platform", github_zip)
    env = online(user_env(python, KIT_PLATFORM_ROOT=str(tmp_path / "platform")))
    params = {"SMOKE": True, "OVERRIDES": DEMO_MODEL}
    start = time.perf_counter()
    cells = run_notebook(notebook, params, env)
    wall = time.perf_counter() - start
    lines, setup = setup_output(cells)
    assert len(lines) == 1 and lines[0].startswith(f"mai-kit found in {attached}: "), lines
    installed = re.search(r"\(installed (\d+) from PyPI in \d+ s: .*timm", lines[0])
    assert installed, lines
    written = pd.read_csv(notebook.parent / "submission.csv", dtype={"ID": str})
    validate_submission(written, load_data(data, smoke=True).sample)
    assert (platform.parent.parent / "platform-freeze.txt").read_text().split() == \
        freeze(platform), "the setup cell changed the platform's packages"
    torch = sh(python, "-c", "import torch, torchvision as v; print(torch.__version__, "
                             "v.__version__)").stdout.split()
    print(f"[first contact] Python {version}, torch {torch[0]}, torchvision {torch[1]}: "
          f"00_quickstart SMOKE on Kaggle's layout: setup cell {setup:.0f} s (GitHub's zip, "
          f"{installed.group(1)} packages from PyPI), whole notebook {wall:.0f} s")
