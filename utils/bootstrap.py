"""First contact: what every notebook's setup cell calls once it has found the kit, and what
installs a heavy package on the first use of the notebook or option that needs it.

The setup cell (the first code cell of each notebook, written from `notebooks/setup_cell.py` by
`python -m utils.dev.publish`) finds the kit — importable already, a checkout around the
notebook, a bundle from `make bundle` (unpacked or zipped, in the notebook's folder, /content,
Drive or /kaggle/input), or a `git clone` of `KIT_REPO` — puts it on `sys.path` and calls
`setup_kit`, which reports in one line.

The runtime's packages are never changed. A requirement that is missing is installed with
every installed distribution pinned to its installed version (pip then either finds versions
that fit what the runtime has, or says why not); a requirement installed at a version the kit
cannot use is not swapped under the live kernel: the cell names it, prints the command and asks
for a restart. torch and torchvision are the platform's own (CUDA) builds: never installed.
With a bundle, everything comes from its `wheels/` folder, with no network.

Standard library only: it runs before any requirement is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLATFORM = ("torch", "torchvision")  # the runtime's own (CUDA) builds: never installed by the kit
RUNTIME = "requirements.txt"  # what the notebooks import: checked by the setup cell
ON_DEMAND = "requirements-extras.txt"  # heavy packages one notebook or option needs (`ensure`)
WHEELS = "wheels"  # a bundle's folder of wheels (offline installs)
LINKED = ("wheels", "weights")  # bundle folders a copied kit links to instead of copying
MANIFEST = "BUNDLE.json"  # what `make bundle` wrote: version, commit, Pythons, wheels, weights
RESTART = ("Colab: Runtime → Restart session; Kaggle: Run → Restart & clear cell outputs; "
           "Jupyter: Kernel → Restart")


class SetupStop(SystemExit):
    """The setup cell stops here, with a message and no traceback (IPython shows only the
    message; a script exits with status 1)."""


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
    except ImportError:
        from pip._vendor.packaging import requirements, version
    return requirements.Requirement, version


def read_requirements(name: str = RUNTIME, kit: str | os.PathLike | None = None) -> list[str]:
    """The requirement lines of one of the kit's requirements files (comments, blank lines and
    pip options such as `-r` left out)."""
    text = (Path(kit or kit_root()) / name).read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def requirement_name(line: str) -> str:
    """The canonical distribution name of a requirement line."""
    return canonical(_packaging()[0](line).name)


def check_requirements(reqs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(requirements not installed, [(requirement, installed version)] of those installed at a
    version the requirement excludes)."""
    Requirement, version = _packaging()
    missing, old = [], []
    for line in reqs:
        req = Requirement(line)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not req.specifier.contains(version.Version(installed), prereleases=True):
            old.append((line, installed))
    return missing, old


def installed_pins() -> list[str]:
    """`name==version` of every installed distribution (the first one on sys.path per name, as
    imports see it): pip's constraints, so an install changes nothing that is there."""
    _, version = _packaging()
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or canonical(name) in pins:
            continue
        try:
            version.Version(dist.version)
        except version.InvalidVersion:  # a legacy version pip cannot pin: leave it out
            continue
        pins[canonical(name)] = f"{canonical(name)}=={dist.version}"
    return sorted(pins.values())


def wheel_folder() -> Path | None:
    """The bundle's wheels beside the kit (unpacked, or linked by `link_bundle`), if any."""
    folder = kit_root() / WHEELS
    return folder if folder.is_dir() else None


def pip_command(reqs: list[str], wheels: Path | None) -> list[str]:
    """`pip install` arguments for `reqs`: from `wheels` only (no index) when given."""
    offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
    return ["install", *offline, *reqs]


def pip_install(reqs: list[str], wheels: Path | None = None) -> None:
    """pip install `reqs` into this Python with every installed distribution pinned; from
    `wheels` only when given. On failure: RuntimeError with pip's last lines and what to do."""
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "installed.txt"
        pins.write_text("".join(f"{pin}\n" for pin in installed_pins()))
        cmd = [sys.executable, "-m", "pip", *pip_command(reqs, wheels), "-q",
               "--disable-pip-version-check", "-c", str(pins)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        source = f"the bundle's wheels ({wheels})" if wheels else "PyPI"
        hint = (f"Was the bundle built for Python {sys.version_info.major}."
                f"{sys.version_info.minor}? (`make bundle`, README: 'Get the kit'.) Or turn the "
                "internet on and remove the bundle." if wheels else
                "No network? Attach the bundle (README: 'Get the kit').")
        raise RuntimeError(f"mai-kit: installing {', '.join(reqs)} from {source} failed, keeping "
                        f"every installed package as it is:\n{tail}\n{hint}")
    importlib.invalidate_caches()


def too_old_message(old: list[tuple[str, str]], wheels: Path | None) -> str:
    """What to run when installed packages are older than the kit needs, and why a restart."""
    have = "\n".join(f"  {requirement_name(r)} {v} (the kit needs {r})" for r, v in old)
    torch = [r for r, _ in old if requirement_name(r) in PLATFORM]
    cmd = " ".join(["%pip", *pip_command([f'"{r}"' for r, _ in old], wheels)])
    note = ("\ntorch/torchvision are the platform's own builds: pick a newer runtime, or install "
            "the build for your machine." if torch else "")
    return ("mai-kit: this runtime has packages older than the kit needs:\n" + have + "\n"
            "The setup cell does not swap packages under a running kernel. Run\n"
            f"  {cmd}\nin a new cell, restart ({RESTART}) and run the notebook again." + note)


def link_bundle(source: Path) -> list[Path]:
    """Link a bundle's wheels/ and weights/ into this kit (a copy of the bundle's code, e.g.
    from a read-only Kaggle dataset), so later installs and weight paths find them."""
    made = []
    for name in LINKED:
        target, link = Path(source) / name, kit_root() / name
        if target.is_dir() and target.resolve() != link.resolve() and not link.exists():
            link.symlink_to(target, target_is_directory=True)
            made.append(link)
    return made


def describe_kit() -> str:
    """The kit's version: the bundle's manifest (version, commit), or "checkout"."""
    manifest = kit_root() / MANIFEST
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return f"bundle {info.get('version', '?')} ({info.get('commit', '?')[:7]})"
    return "checkout" if (kit_root() / ".git").exists() else "copy"


def setup_kit(how: str, source: str | os.PathLike | None = None) -> str:
    """Check the runtime against requirements.txt, install what is missing (never an upgrade)
    and say in one line what was done. Stops (SetupStop) when something is too old."""
    start = time.perf_counter()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if source is not None and Path(source).resolve() != kit_root():
        link_bundle(Path(source))
    missing, old = check_requirements(read_requirements(RUNTIME))
    platform = [r for r in missing if requirement_name(r) in PLATFORM]
    if platform:
        raise SetupStop(f"mai-kit: {', '.join(platform)} not installed. The kit uses the "
                        "platform's own builds (Colab and Kaggle have them): install the build "
                        "for your machine (pytorch.org), then run this cell again.")
    wheels = wheel_folder()
    if old:
        raise SetupStop(too_old_message(old, wheels))
    done = "requirements present"
    if missing:
        try:
            pip_install(missing, wheels)
        except RuntimeError as err:
            raise SetupStop(str(err)) from None
        names = ", ".join(requirement_name(r) for r in missing)
        done = (f"installed {len(missing)} from {'the bundle' if wheels else 'PyPI'} in "
                f"{time.perf_counter() - start:.0f} s: {names}")
    return f"mai-kit {how}: {kit_root()} [{describe_kit()}] ({done})"


def ensure(name: str, purpose: str) -> None:
    """Install the on-demand requirement `name` (requirements-extras.txt) on first use, from the
    bundle's wheels or PyPI, saying so in one line; a no-op when it is installed. `purpose`
    says who needs it (e.g. "04_adapt's OBJECTIVE")."""
    reqs = [r for r in read_requirements(ON_DEMAND) if requirement_name(r) == canonical(name)]
    if not reqs:
        raise ValueError(f"{name!r} is not listed in {ON_DEMAND}")
    missing, old = check_requirements(reqs)
    if old:
        raise RuntimeError(too_old_message(old, wheel_folder()))
    if missing:
        wheels, start = wheel_folder(), time.perf_counter()
        print(f"{purpose} needs {reqs[0]}: installing it from "
              f"{'the bundle' if wheels else 'PyPI'} …", end="", flush=True)
        pip_install(reqs, wheels)
        print(f" done in {time.perf_counter() - start:.0f} s", flush=True)
