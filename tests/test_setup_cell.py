"""The setup cell: one cell, byte-identical in every notebook, before the parameters cell; it
does nothing but say so when the kit is importable, finds an attached (read-only) kit or clones
KIT_REPO otherwise, and prints one line. The badges use the cell's repository URL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils import bootstrap
from utils.dev.pipeline import list_notebooks
from utils.paths import kit_root

NOTEBOOKS = list_notebooks()
# Run before the cell: forget the kit's editable install and any sys.path entry of the kit, as
# in a fresh Colab or Kaggle kernel (the kit's requirements stay installed).
FORGET_KIT = f"""
import sys
from pathlib import Path
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path({str(kit_root())!r})]
"""


def setup_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c.get("id") == "setup"]


def setup_source() -> str:
    return "".join(setup_cells(NOTEBOOKS[0])[0]["source"])


def kit_repo_default() -> str:
    return re.search(r'os\.environ\.get\("KIT_REPO", "([^"]+)"\)', setup_source()).group(1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_starts_with_the_same_setup_cell(path):
    cells = json.loads(path.read_text())["cells"]
    setup = setup_cells(path)
    assert len(setup) == 1, f"{path.name}: needs exactly one cell with id 'setup'"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code[0].get("id") == "setup", f"{path.name}: the setup cell must be the first code cell"
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), path.name
    assert "parameters" not in setup[0]["metadata"].get("tags", [])
    assert "".join(setup[0]["source"]) == setup_source(), f"{path.name}: setup cell differs"
    assert not setup[0]["outputs"] and setup[0]["execution_count"] is None


def test_setup_cell_is_short_and_names_the_repository_once():
    source = setup_source()
    assert len(source.splitlines()) <= 26 and max(map(len, source.splitlines())) <= 100
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", kit_repo_default())
    assert source.count(kit_repo_default()) == 1 and source.count("print(") == 1


def test_badges_open_the_notebooks_of_the_cells_repository():
    repo = kit_repo_default()
    slug = repo.removeprefix("https://github.com/")
    names = {p.name for p in NOTEBOOKS}
    for readme in ("README.md", "notebooks/README.md"):
        text = (kit_root() / readme).read_text()
        colab = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", text)
        kaggle = re.findall(r"https://kaggle\.com/kernels/welcome\?src=([^)\s]+)", text)
        assert colab and kaggle, f"{readme}: no Open in Colab / Open in Kaggle badge"
        for link in colab:
            owner_repo, _, nb = link.partition("/blob/main/notebooks/")
            assert owner_repo == slug and nb in names, f"{readme}: {link}"
        for link in kaggle:
            base, _, nb = link.partition("/blob/main/notebooks/")
            assert base == repo and nb in names, f"{readme}: {link}"


def run_cell(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Execute the setup cell in a fresh Python that has the kit's requirements but not the kit
    (twice: the second run finds the kit importable)."""
    code = FORGET_KIT + setup_source() + "\n" + setup_source()
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "KIT_KAGGLE_INPUT": str(cwd / "no-input"), **env})


def small_kit(folder: Path) -> Path:
    """The files the setup cell needs from a kit: utils/ and requirements.txt."""
    shutil.copytree(kit_root() / "utils", folder / "utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(kit_root() / "requirements.txt", folder / "requirements.txt")
    return folder


def test_importable_kit_is_left_alone_and_quick():
    code = f"import time; t = time.perf_counter()\n{setup_source()}\n" \
           "print(f'{time.perf_counter() - t:.3f}')"
    out = subprocess.run([sys.executable, "-c", code], cwd=kit_root(), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == f"kit importable: {kit_root()} (requirements present)"
    assert len(out) == 2 and float(out[1]) < 2.0, out


def test_attached_read_only_kit_is_copied_and_used(tmp_path):
    dataset = small_kit(tmp_path / "input" / "mai-kit-offline")
    (dataset / "weights").mkdir()
    (dataset / "weights" / "lite0.safetensors").write_bytes(b"0" * 10)
    user = tmp_path / "user"
    user.mkdir()
    for p in [dataset, *dataset.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        done = run_cell(user, {"KIT_KAGGLE_INPUT": str(tmp_path / "input"),
                               "KIT_REPO": "file:///nowhere"})
    finally:
        for p in [dataset, *dataset.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"kit found in {dataset}: {user / 'mai-kit'} (requirements present)",
                     f"kit importable: {user / 'mai-kit'} (requirements present)"]
    assert (user / "mai-kit" / "utils" / "paths.py").is_file()
    assert not (user / "mai-kit" / "weights").exists()  # weights stay in the dataset


def test_kit_is_cloned_from_kit_repo(tmp_path):
    remote = small_kit(tmp_path / "remote")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "kit"]):
        subprocess.run([*git, *args], cwd=remote, check=True)
    user = tmp_path / "user"
    user.mkdir()
    start = time.perf_counter()
    done = run_cell(user, {"KIT_REPO": remote.as_uri()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (f"kit cloned {remote.as_uri()}: {user / 'mai-kit'} "
                                           "(requirements present)")
    assert (user / "mai-kit" / ".git").is_dir() and time.perf_counter() - start < 30


def test_failed_clone_says_so(tmp_path):
    done = run_cell(tmp_path, {"KIT_REPO": (tmp_path / "missing").as_uri()})
    assert done.returncode != 0 and "git" in done.stderr and "CalledProcessError" in done.stderr
    assert done.stdout == ""


def test_requirements_leave_out_torch_and_dev_tools_and_detect_old_versions():
    reqs = bootstrap.requirements()
    names = {bootstrap.canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs}
    assert {"timm", "numpy", "albumentations"} <= names
    assert not names & {"torch", "torchvision", "pytest", "ruff"}
    assert bootstrap.missing_requirements(reqs) == []  # the kit's venv has them all
    assert bootstrap.missing_requirements(["numpy>=999", "not-a-package-xyz", "numpy>=1"]) == [
        "numpy>=999", "not-a-package-xyz"]
    assert all(p.startswith(("torch==", "torchvision==")) for p in bootstrap.platform_pins())


def test_offline_install_failure_names_the_folder_and_pips_reason(tmp_path):
    with pytest.raises(RuntimeError, match="offline folder") as err:
        bootstrap.pip_install(["not-a-package-xyz"], wheels=tmp_path)
    assert "not-a-package-xyz" in str(err.value) and len(str(err.value).splitlines()) <= 16
