"""First contact: what every notebook's setup cell calls once it has found or fetched the kit.

The setup cell (the first code cell of each notebook, `SETUP_CELL` in tests/test_setup_cell.py
keeps them identical) locates the kit — already importable, a checkout around the notebook, an
attached Kaggle dataset, or a `git clone` of `KIT_REPO` — puts it on `sys.path` and calls
`setup_kit`, which installs the requirements this Python lacks and reports in one line.

Standard library only: it runs before any requirement is installed. It never installs or
replaces the platform's own torch and torchvision (Colab and Kaggle ship CUDA builds): they are
left out of the install and pinned to the installed versions, so a dependency that wants another
torch fails with pip's message instead of swapping it. With an offline folder (a Kaggle dataset
built by `python -m utils.dev.kaggle`) it installs from that folder's `wheels/` with no network.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PLATFORM = ("torch", "torchvision")  # the runtime's own (CUDA) builds: never installed by the kit
DEV_TOOLS = ("pytest", "ruff")  # requirements for developing the kit, not for its notebooks
WHEELS = "wheels"  # folder of an offline kit (Kaggle dataset) that holds the wheels


def kit_root() -> Path:
    """The folder that holds this `utils` package."""
    return Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    """A distribution name in PEP 503 normal form (`Scikit_Learn` → `scikit-learn`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    """The `packaging` library (every Jupyter install has it; pip vendors a copy otherwise)."""
    try:
        from packaging import requirements, version
    except ImportError:  # ipykernel depends on packaging; pip vendors it for the rest
        from pip._vendor.packaging import requirements, version
    return requirements.Requirement, version


def requirements(kit: str | os.PathLike | None = None) -> list[str]:
    """The lines of the kit's requirements.txt a notebook needs (no torch/torchvision, no dev
    tools), as written there."""
    Requirement, _ = _packaging()
    text = (Path(kit or kit_root()) / "requirements.txt").read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    skip = {canonical(n) for n in (*PLATFORM, *DEV_TOOLS)}
    return [line for line in lines if line and canonical(Requirement(line).name) not in skip]


def missing_requirements(reqs: list[str]) -> list[str]:
    """The requirements that are not installed, or installed at a version they exclude."""
    Requirement, version = _packaging()
    missing = []
    for line in reqs:
        req = Requirement(line)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not req.specifier.contains(version.Version(installed), prereleases=True):
            missing.append(line)
    return missing


def platform_pins() -> list[str]:
    """`name==version` of the installed torch and torchvision (constraints for pip)."""
    pins = []
    for name in PLATFORM:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return pins


def pip_install(reqs: list[str], wheels: str | os.PathLike | None = None) -> None:
    """pip install `reqs` into this Python, torch/torchvision pinned; from `wheels` only (no
    network) when given. On failure the error carries pip's last lines, not its whole log."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "platform.txt"
        constraints.write_text("".join(f"{pin}\n" for pin in platform_pins()))
        offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "-c", str(constraints), *offline, *reqs]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        source = f"the offline folder {wheels}" if wheels else "PyPI"
        raise RuntimeError(f"installing the kit's requirements from {source} failed:\n{tail}")
    importlib.invalidate_caches()


def setup_kit(how: str, source: str | os.PathLike | None = None) -> str:
    """Install what this Python lacks and say in one line what the setup cell did. `source` is
    the folder the kit came from; its `wheels/` folder (an offline kit) is used if present."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    missing = missing_requirements(requirements())
    wheels = Path(source) / WHEELS if source and (Path(source) / WHEELS).is_dir() else None
    if missing:
        pip_install(missing, wheels)
    names = ", ".join(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0] for line in missing)
    installed = (f"installed {len(missing)} from {wheels or 'PyPI'}: {names}" if missing
                 else "requirements present")
    return f"kit {how}: {kit_root()} ({installed})"
