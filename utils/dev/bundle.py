"""Build the offline bundle: one zip that serves Colab (upload, Drive) and Kaggle (a dataset).

    python -m utils.dev.bundle                                   # → dist/mai-kit-bundle.zip
    python -m utils.dev.bundle --weights path/to/tf_efficientnet_lite0.in1k.safetensors
    python -m utils.dev.bundle --has none --python 3.11          # every wheel, for one Python

It runs in any venv with pip, from a git checkout or from an unpacked download of the kit (GitHub's
"Download ZIP"): no git, no make, nothing of the kit's requirements needed. The zip holds one
folder, `mai-kit/`: the kit's files (`git ls-files` in a checkout; in a download, every file but
what .gitignore leaves out: `UNTRACKED`), `wheels/` and `weights/` (the files given) and
`BUNDLE.json` (version from pyproject.toml, commit when there is one, Pythons, wheels, weights).
`wheels/` has a wheel of every requirement (requirements.txt and requirements-extras.txt) and of
its dependencies, for each target Python on manylinux x86_64, except torch/torchvision (the
platform's own builds) and what both Colab and Kaggle ship (`PLATFORMS_HAVE`; `--has` changes
it, `--has none` bundles everything). A dependency the index has only as a source archive
(antlr4-python3-runtime, which hydra-core needs for lightly) is built into a wheel here with
`pip wheel`, if it is pure Python.

Downloads go through a cache (`--cache`, default dist/wheel-cache): the wheels, and the versions
the index chose for each Python and set of requirements, so a rebuild with the same
requirements needs no network (`--refresh` asks the index again). The zip is written beside its
final name and renamed into place, so a failed build leaves nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename
except ImportError:  # a bare venv: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import parse_wheel_filename

from utils.bootstrap import (
    MANIFEST,
    ON_DEMAND,
    PLATFORM,
    RUNTIME,
    WHEELS,
    canonical,
    read_requirements,
)
from utils.places import kit_root, resolve

# What both Colab (Python 3.12) and Kaggle (Python 3.11) images ship, at versions the kit's
# requirements accept (2025 images): large compiled packages, neither bundled nor followed.
# Everything else the requirements pull in is bundled (timm, albumentations, grad-cam, lightly
# and hydra-core, ruptures, ...): a few MB, and the setup cell never needs the network.
PLATFORMS_HAVE = ("numpy", "pandas", "scipy", "scikit-learn", "scikit-image", "pillow",
                  "matplotlib", "opencv-python", "opencv-python-headless", "numba", "llvmlite",
                  "pyyaml", "psutil", "requests", "packaging", "pydantic", "pydantic-core",
                  "huggingface-hub", "typing-extensions", "jinja2", "markupsafe", "joblib",
                  "threadpoolctl", "tqdm", "filelock", "fsspec", "protobuf", "aiohttp")
PYTHONS = ("3.11", "3.12", "3.13")  # Kaggle's and Colab's Pythons, and Colab's next one
# pip (23.x) does not widen a manylinux tag to older glibc versions: name each one.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "linux_x86_64")
OUT = "dist/mai-kit-bundle.zip"
CACHE = "dist/wheel-cache"
TOP = "mai-kit"  # the zip's one folder: the setup cell unpacks it to <work>/mai-kit
# What .gitignore leaves out (a download has none of it; an unpacked one used for a while may):
# folder names at any depth, and top-level folders of which only the README is the kit's.
UNTRACKED = (".git", ".venv", "__pycache__", ".pytest_cache", "dist", ".ruff_cache",
             ".ipynb_checkpoints", "cache", "runs")
TOP_UNTRACKED = ("wheels", "weights", "data", "submissions")



def target_args(python: str, platforms: tuple[str, ...] = PLATFORMS) -> list[str]:
    """pip options that pick wheels for another Python and platform."""
    abi = "cp" + python.replace(".", "")
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none",
            *(arg for p in platforms for arg in ("--platform", p))]


def pip(*args: str) -> subprocess.CompletedProcess:
    """Run pip in this Python; on failure raise with its last lines."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip() or done.stdout.strip())
    return done


def build_pure_wheel(spec: str, cache: Path) -> Path:
    """Build a wheel of `spec` from its source archive into `cache` (pure Python only)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("wheel", "-q", "--no-deps", "--no-binary", ":all:", "-w", tmp, spec)
        wheel = next(Path(tmp).glob("*.whl"))
        if not wheel.name.endswith("-none-any.whl"):
            raise RuntimeError(f"{spec}: the index has only a source archive with compiled "
                               f"code ({wheel.name}); it cannot be built for other platforms")
        return Path(shutil.move(wheel, cache / wheel.name))


def build_source_only(reqs: list[str], cache: Path) -> list[Path]:
    """Wheels, in `cache`, of the distributions in the tree of `reqs` that the index has only as
    source archives (resolved for this Python, which may build them); pure Python only."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
            "--find-links", str(cache), *reqs)
        items = json.loads(report.read_text())["install"]
    sources = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
               if not i["download_info"]["url"].endswith(".whl")]
    return [build_pure_wheel(spec, cache) for spec in sources]


def resolve_report(reqs: list[str], target: list[str], cache: Path) -> list[dict]:
    """pip's resolution of `reqs` for the target: the metadata of every distribution."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
            "--target", str(Path(tmp) / "t"), "--find-links", str(cache), *target, *reqs)
        return [item["metadata"] for item in json.loads(report.read_text())["install"]]


def marker_env(python: str) -> dict[str, str]:
    """Environment markers of CPython `python` on Linux x86_64."""
    return {"python_version": python, "python_full_version": f"{python}.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


def keep_tree(reqs: list[str], items: list[dict], has: tuple[str, ...],
              python: str) -> dict[str, str]:
    """name → version of what `reqs` need, walking dependencies from the roots but neither
    keeping nor following what the target has (`has`, torch, torchvision)."""
    meta = {canonical(m["name"]): m for m in items}
    skip = {canonical(n) for n in (*has, *PLATFORM)}
    keep: dict[str, str] = {}
    todo = [Requirement(r) for r in reqs]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in skip or name in keep or name not in meta:
            continue
        keep[name] = meta[name]["version"]
        for dep in map(Requirement, meta[name].get("requires_dist") or []):
            extras = ["", *sorted(req.extras)]
            if dep.marker is None or any(dep.marker.evaluate({**marker_env(python), "extra": e})
                                         for e in extras):
                todo.append(dep)
    return keep


def fetch_wheels(pins: dict[str, str], target: list[str], cache: Path, dest: Path) -> None:
    """Copy a target wheel of each pin from the cache into `dest`, downloading the missing ones
    into the cache first."""
    specs = [f"{n}=={v}" for n, v in sorted(pins.items())]
    local = ["--no-index", "--find-links", str(cache)]
    try:
        pip("download", "-q", "--no-deps", "-d", str(dest), *local, *target, *specs)
    except RuntimeError:
        pip("download", "-q", "--no-deps", "-d", str(cache), "--find-links", str(cache),
            *target, *specs)
        pip("download", "-q", "--no-deps", "-d", str(dest), *local, *target, *specs)


def resolve_pins(reqs: list[str], has: tuple[str, ...], python: str, cache: Path,
                 refresh: bool = False) -> dict[str, str]:
    """name → version of every wheel the bundle needs for `python`. The index is asked once per
    set of requirements: the answer is kept in the cache (`refresh` asks again)."""
    key = hashlib.sha256(json.dumps([reqs, sorted(has), python, PLATFORMS]).encode()).hexdigest()
    saved = cache / f"pins-{python}-{key[:16]}.json"
    if saved.is_file() and not refresh:
        return json.loads(saved.read_text())
    build_source_only(reqs, cache)
    pins = keep_tree(reqs, resolve_report(reqs, target_args(python), cache), has, python)
    saved.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    return pins


def collect_wheels(dest: Path, has: tuple[str, ...], pythons: tuple[str, ...], cache: Path,
                   refresh: bool = False) -> dict[str, dict[str, str]]:
    """Wheels of the kit's requirements for each Python into `dest`; python → {name: version}.
    A rebuild with the same requirements needs no network (pins and wheels are cached)."""
    skip = {canonical(n) for n in (*has, *PLATFORM)}
    reqs = [r for r in read_requirements(RUNTIME) + read_requirements(ON_DEMAND)
            if canonical(Requirement(r).name) not in skip]
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    chosen = {}
    for python in pythons:
        chosen[python] = resolve_pins(reqs, has, python, cache, refresh)
        fetch_wheels(chosen[python], target_args(python), cache, dest)
    return chosen


def kit_files(root: Path) -> list[str]:
    """The kit's files under `root`: `git ls-files` in a checkout, else every file but what
    .gitignore leaves out (`UNTRACKED`, `TOP_UNTRACKED` but their README.md, *.egg-info)."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                                text=True)
        if listed.returncode == 0:
            return [f for f in listed.stdout.split("\0") if f and (root / f).is_file()]
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        skip = any(part in UNTRACKED or part.endswith(".egg-info") for part in rel.parts)
        own = rel.parts[0] in TOP_UNTRACKED and rel.parts[1:] != ("README.md",)
        if path.is_file() and not skip and not own:
            files.append(rel.as_posix())
    return files


def copy_kit(dest: Path) -> list[str]:
    """Copy the kit's files (`kit_files`) into `dest`."""
    files = kit_files(kit_root())
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kit_root() / name, dest / name)
    return files


def commit() -> str:
    """The checkout's commit (with `+changes` when the tree differs from it); "" without git."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=kit_root(), capture_output=True,
                                  text=True).stdout.strip()
        except OSError:
            return ""

    if not (kit_root() / ".git").exists() or not git("rev-parse", "HEAD"):
        return ""
    return git("rev-parse", "HEAD") + ("+changes" if git("status", "--porcelain") else "")


def zip_folder(folder: Path, path: Path) -> Path:
    """Zip `folder` as `<folder.name>/...`; wheels and weights are stored (already packed)."""
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                packed = f.suffix in (".whl", ".safetensors", ".zip", ".pth", ".bin")
                z.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}",
                        zipfile.ZIP_STORED if packed else zipfile.ZIP_DEFLATED)
    return path


def build_bundle(out: str | Path = OUT, weights: tuple[str, ...] = (),
                 has: tuple[str, ...] = PLATFORMS_HAVE, pythons: tuple[str, ...] = PYTHONS,
                 cache: str | Path = CACHE, refresh: bool = False) -> Path:
    """Write the bundle zip at `out` (relative paths from the kit root); returns its path."""
    out, cache = resolve(out), resolve(cache)
    missing = [w for w in weights if not Path(w).is_file()]
    if missing:
        raise FileNotFoundError(f"weight files not found: {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.parent) as tmp:
        kit = Path(tmp) / TOP
        copy_kit(kit)
        chosen = collect_wheels(kit / WHEELS, has, pythons, cache, refresh)
        for w in weights:
            (kit / "weights").mkdir(exist_ok=True)
            shutil.copy2(w, kit / "weights" / Path(w).name)
        info = {"version": kit_version(), "commit": commit(),
                "built": time.strftime("%Y-%m-%d %H:%M:%S"), "pythons": list(pythons),
                "platforms_have": list(has), "wheels": chosen,
                "weights": [Path(w).name for w in weights]}
        (kit / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
        partial = zip_folder(kit, Path(tmp) / out.name)
        partial.replace(out)
    return out


def kit_version() -> str:
    """The version in pyproject.toml."""
    text = (kit_root() / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def sizes(path: Path) -> dict[str, int]:
    """Compressed bytes in the zip per part: code, wheels, weights."""
    parts = {"code": 0, "wheels": 0, "weights": 0}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            top = info.filename.split("/")[1]
            parts[top if top in parts else "code"] += info.compress_size
    return parts


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help="the zip (default %(default)s)")
    parser.add_argument("--weights", nargs="*", default=[], help="weight files to include")
    parser.add_argument("--has", default=",".join(PLATFORMS_HAVE),
                        help="comma-separated packages the platforms have (default: "
                             "PLATFORMS_HAVE; 'none' bundles everything but torch/torchvision)")
    parser.add_argument("--python", nargs="*", default=list(PYTHONS), help="target Pythons")
    parser.add_argument("--cache", default=CACHE, help="wheel cache (default %(default)s)")
    parser.add_argument("--refresh", action="store_true", help="resolve with the index")
    args = parser.parse_args(argv)
    has = () if args.has.strip() in ("", "none") else tuple(
        n.strip() for n in args.has.split(",") if n.strip())
    start = time.perf_counter()
    out = build_bundle(args.out, tuple(args.weights), has, tuple(args.python), args.cache,
                       args.refresh)
    mb = {k: v / 1e6 for k, v in sizes(out).items()}
    with zipfile.ZipFile(out) as z:
        wheels = sorted({parse_wheel_filename(Path(n).name)[0] for n in z.namelist()
                         if n.endswith(".whl")})
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB (code {mb['code']:.1f}, wheels "
          f"{mb['wheels']:.1f}, weights {mb['weights']:.1f}) in {time.perf_counter() - start:.0f}"
          f" s; {len(wheels)} packages for Python {', '.join(args.python)}: {', '.join(wheels)}"
          "\nColab: upload it to /content or My Drive; Kaggle: upload it as a dataset and "
          "attach it (README: 'Start here').")
    return out


if __name__ == "__main__":
    main()
