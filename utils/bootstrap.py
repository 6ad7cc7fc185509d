"""First contact: what every notebook's setup cell calls once it has found the kit, and what
installs a heavy package on the first use of the notebook or option that needs it.

The setup cell (the first code cell of each notebook, written from `notebooks/setup_cell.py` by
`python -m utils.dev.publish`) finds the kit — importable already, a checkout around the
notebook, any folder or zip holding `utils/bootstrap.py` at most one folder in (GitHub's
"Download ZIP" of any branch, `git archive`, the bundle; zipped or unpacked, any name) beside the
notebook, in /content, My Drive or up to five folders under /kaggle/input — or a `git clone` of
`KIT_REPO`. `place_kit` (imported from inside the zip when the kit is one) makes it importable
from a writable folder, and `setup_kit` checks the runtime and reports in one line.

The runtime's packages are never changed. A requirement that is missing is installed with
every installed distribution pinned to its installed version (pip then either finds versions
that fit what the runtime has, or says why not); a requirement installed at a version the kit
cannot use is not swapped under the live kernel: the cell names it, prints the command and asks
for a restart. torch and torchvision are the platform's own (CUDA) builds: never installed.
With a bundle, installs come from its `wheels/` folder with no network; a wheel it lacks for
this Python is taken from the package index when the internet is on, and named, with this
Python and the command that builds a bundle for it, when it is off.

Standard library only: it runs before any requirement is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

PLATFORM = ("torch", "torchvision")  # the runtime's own (CUDA) builds: never installed by the kit
RUNTIME = "requirements.txt"  # what the notebooks import: checked by the setup cell
ON_DEMAND = "requirements-extras.txt"  # heavy packages one notebook or option needs (`ensure`)
WHEELS = "wheels"  # a bundle's folder of wheels (offline installs)
LINKED = ("wheels", "weights")  # bundle folders a copied kit links to instead of copying
STAMP = ".kit-source"  # in a kit unpacked from a zip: which zip (path, size, time) it came from
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


def pip_command(reqs: list[str], wheels: Path | None, index: bool = False) -> list[str]:
    """`pip install` arguments for `reqs`: from `wheels` (and the index too when `index`)."""
    local = ["--find-links", str(wheels)] if wheels else []
    return ["install", *([] if index or not wheels else ["--no-index"]), *local, *reqs]


def run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """pip `args` in this Python, every installed distribution pinned (never an upgrade)."""
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "installed.txt"
        pins.write_text("".join(f"{pin}\n" for pin in installed_pins()))
        return subprocess.run([sys.executable, "-m", "pip", *args,  # not -q: pip's reasons
                               "--disable-pip-version-check", "-c", str(pins)],
                              capture_output=True, text=True)


def pip_tail(done: subprocess.CompletedProcess, lines: int = 12) -> str:
    """pip's last lines of output, or the lines saying what conflicts, when it says that."""
    text = (done.stderr or done.stdout).strip()
    conflict = re.search(r"The conflict is caused by:\n(?:.+\n)+", f"{done.stdout}\n")
    return conflict.group(0).strip() if conflict else "\n".join(text.splitlines()[-lines:])


def python_version() -> str:
    """This Python as `3.12`."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def lacking(done: subprocess.CompletedProcess) -> str | None:
    """The distribution pip found no version of (from its error), if that was the failure."""
    hit = re.search(r"(?:No matching distribution found for|satisfies the requirement) "
                    r"([A-Za-z0-9][A-Za-z0-9_.\-]*)", done.stderr + done.stdout)
    return hit.group(1) if hit else None


def pip_install(reqs: list[str], wheels: Path | None = None) -> str:
    """pip install `reqs` into this Python with every installed distribution pinned: from
    `wheels` alone when they have everything, else from the index with `wheels` as well; returns
    where from. On failure: RuntimeError naming what is lacking, for which Python, pip's reason
    and what to do."""
    done = offline = run_pip(pip_command(reqs, wheels))
    if done.returncode and wheels:  # a wheel the bundle lacks: the index, if it can be reached
        done = run_pip([*pip_command(reqs, wheels, index=True), "--retries", "1"])
    if done.returncode:
        raise RuntimeError(install_failure(reqs, wheels, offline, done))
    importlib.invalidate_caches()
    return "PyPI" if not wheels else "the bundle" if not offline.returncode else \
        "the bundle and PyPI"


def install_failure(reqs: list[str], wheels: Path | None, offline: subprocess.CompletedProcess,
                    done: subprocess.CompletedProcess) -> str:
    """What failed, pip's reason and what to do."""
    head = (f"mai-kit: installing {', '.join(reqs)} failed, keeping every installed package as "
            "it is.")
    if not wheels:
        return (f"{head} From PyPI:\n{pip_tail(done)}\nNo internet? Attach the kit's bundle "
                "(README: 'Start here').")
    version, name = python_version(), lacking(offline)
    if name is None:  # the wheels are there, but need newer versions than the runtime has
        return (f"{head} The bundle's wheels ({wheels}) do not fit the packages this runtime "
                f"has, and the package index could not supply ones that do (internet off?):\n"
                f"{pip_tail(offline, 8)}\nTurn the internet on (Kaggle: Settings → Internet on) "
                "and run this cell again.")
    return (f"{head} The bundle ({wheels}) has no wheel of {name} for Python "
            f"{version}, and the package index could not supply it (internet off?):\n"
            f"{pip_tail(done, 6)}\nTurn the internet on (Kaggle: Settings → Internet on) and run "
            f"this cell again, or use a bundle built for Python {version}: `python -m "
            f"utils.dev.bundle --python {version}` (README: 'Start here').")


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
        commit = info.get("commit") or ""
        return f"bundle {info.get('version', '?')}" + (f" ({commit[:7]})" if commit else "")
    return "checkout" if (kit_root() / ".git").exists() else "copy"


def unpack_kit(archive: Path, inner: str, kit: Path) -> None:
    """Unpack the kit under `inner` in the zip `archive` into `kit`, once per zip (a stamp says
    which); files already in `kit` that the zip lacks (runs, caches) are kept."""
    info = archive.stat()
    stamp = f"{archive} {info.st_size} {info.st_mtime_ns}"
    if (kit / STAMP).is_file() and (kit / STAMP).read_text() == stamp:
        return
    kit.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mai-kit-", dir=kit.parent) as tmp:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp, [n for n in z.namelist() if n.startswith(inner)])
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise SetupStop(f"mai-kit: {archive} could not be unpacked ({err}): cut short while "
                            "uploading or downloading? Download and upload it again, or unzip "
                            "it and upload the folder; then run this cell again.") from None
        shutil.copytree(Path(tmp) / inner, kit, dirs_exist_ok=True, symlinks=True)
    (kit / STAMP).write_text(stamp)


def place_kit(source: str | os.PathLike, inner: str | None, kit: str | os.PathLike) -> str:
    """Make the kit the setup cell found importable from a writable folder: a zip (`inner`: the
    folder in it holding utils/) is unpacked to `kit`; a folder is used in place when it is the
    notebook's checkout, the notebook's folder or right in it or in the working folder, else
    (a read-only dataset, Drive) its code is copied to `kit`. Returns how it was found."""
    source, kit, here = Path(source), Path(kit), Path.cwd()
    if inner is not None:
        unpack_kit(source, inner, kit)
    elif source in (here, here.parent) or source.parent in (here, kit.parent):
        kit = source
    else:
        shutil.copytree(source, kit, ignore=shutil.ignore_patterns(*LINKED, STAMP),
                        dirs_exist_ok=True)
    cell = (str(source), os.path.join(source, inner or ""))  # what the setup cell put there
    sys.path[:] = [str(kit), *(p for p in sys.path if p not in cell)]
    for name in [m for m in sys.modules if m.split(".")[0] == "utils"]:
        del sys.modules[name]  # this module included, when it was imported from the zip
    importlib.invalidate_caches()
    return f"found in {source}"


def copies_note(found: list, broken: list) -> str:
    """One line on the other copies of the kit and the unreadable zips, or ""."""
    others = [str(Path(f[0])) for f in found[1:]]
    parts = ([f"{len(found)} copies found; using {Path(found[0][0])} (not {', '.join(others)}: "
              "remove the copies you do not want)"] if others else [])
    parts += [f"not a readable zip, left aside: {', '.join(map(str, broken))}"] if broken else []
    return "\nmai-kit: " + "; ".join(parts) if parts else ""


def setup_kit(how: str, found: list = (), broken: list = ()) -> str:
    """Check the runtime against requirements.txt, install what is missing (never an upgrade)
    and say in one line what was done (a second line on other copies found, if any). `found`:
    the setup cell's (folder or zip, folder in the zip or None), the one in use first. Stops
    (SetupStop) when something is too old."""
    start = time.perf_counter()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    source, inner = found[0] if found else (None, None)
    if source is not None and inner is None and Path(source).resolve() != kit_root():
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
            where = pip_install(missing, wheels)
        except RuntimeError as err:
            raise SetupStop(str(err)) from None
        names = ", ".join(requirement_name(r) for r in missing)
        done = (f"installed {len(missing)} from {where} in "
                f"{time.perf_counter() - start:.0f} s: {names}")
    return (f"mai-kit {how}: {kit_root()} [{describe_kit()}] ({done})"
            + copies_note(list(found), list(broken)))


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
        where = pip_install(reqs, wheels)
        print(f" done in {time.perf_counter() - start:.0f} s"
              + (f" (from {where})" if where != "the bundle" and wheels else ""), flush=True)
