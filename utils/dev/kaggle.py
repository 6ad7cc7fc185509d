"""Build the offline kit: one folder to upload as a Kaggle dataset, for notebooks with no internet.

    python -m utils.dev.kaggle                                   # → dist/kaggle/mai-kit
    python -m utils.dev.kaggle --weights /path/to/tf_efficientnet_lite0.safetensors

The folder holds the kit's tracked files (`git ls-files`), `wheels/` with every requirement the
Kaggle image lacks (`KAGGLE_HAS` lists what it has) and their dependencies, downloaded for
Kaggle's Python and platform, and `weights/` with the weight files given. Attached to a
notebook, the setup cell finds it under /kaggle/input, copies the code to /kaggle/working and
installs from `wheels/` with no network; set `PRETRAINED = "/kaggle/input/<dataset>/weights/
<file>"`. torch and torchvision are never downloaded: Kaggle's own builds are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

from utils.bootstrap import PLATFORM, WHEELS, canonical, requirements
from utils.paths import kit_root, resolve

# What Kaggle's Python image (Python 3.11, 2025) already ships at versions requirements.txt
# accepts, with their own dependencies: neither downloaded nor followed. Requirements not listed
# here (timm, albumentations, grad-cam, lpips, ...) go into wheels/ with what they need beyond it.
KAGGLE_HAS = ("numpy", "pandas", "scipy", "scikit-learn", "scikit-image", "pillow", "matplotlib",
              "seaborn", "tqdm", "safetensors", "huggingface-hub", "pyyaml", "pydantic",
              "opencv-python-headless", "opencv-python", "umap-learn", "numba", "llvmlite",
              "pynndescent", "papermill", "ipykernel", "nbformat", "requests", "packaging",
              "typing-extensions", "joblib", "threadpoolctl", "accelerate")
KAGGLE_PYTHON = "3.11"
# pip (23.x) does not widen a manylinux tag to older glibc versions: name each one Kaggle runs.
KAGGLE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
OUT = "dist/kaggle/mai-kit"
METADATA = {"title": "mai-kit offline", "id": "YOUR-KAGGLE-USERNAME/mai-kit",
            "licenses": [{"name": "other"}]}


def target_args(python_version: str, platforms: tuple[str, ...]) -> list[str]:
    """pip options that pick wheels for another Python and platform."""
    plat = [arg for p in platforms for arg in ("--platform", p)]
    abi = "cp" + python_version.replace(".", "")
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none", *plat]


def pip(*args: str) -> None:
    """Run pip in this Python; on failure raise with its last lines."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"pip {' '.join(args[:2])} failed:\n{tail}")


def wheel_roots(reqs: list[str], dest: Path, target: list[str]) -> None:
    """A wheel of each requirement in `dest`: downloaded for the target, or built here when the
    index has only a source archive (then it must be pure Python)."""
    for req in reqs:
        try:
            pip("download", "-q", "--no-deps", "-d", str(dest), *target, req)
        except RuntimeError:
            built = Path(tempfile.mkdtemp(dir=dest))
            pip("wheel", "-q", "--no-deps", "-w", str(built), req)
            for whl in built.glob("*.whl"):
                if not whl.name.endswith("-none-any.whl"):
                    raise RuntimeError(f"{req}: only a source archive with compiled code; "
                                       f"cannot build {whl.name} for Kaggle here") from None
                shutil.move(whl, dest / whl.name)
            shutil.rmtree(built)


def resolve_tree(reqs: list[str], wheels: Path, target: list[str], has: tuple[str, ...],
                 python_version: str) -> dict[str, str]:
    """name → version of every distribution `reqs` need on the target, without those it has
    (`has`, torch, torchvision) and without following their own dependencies."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
            "--target", str(Path(tmp) / "t"), "--find-links", str(wheels), *target, *reqs)
        items = {canonical(i["metadata"]["name"]): i["metadata"]
                 for i in json.loads(report.read_text())["install"]}
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    skip = {canonical(n) for n in (*has, *PLATFORM)}
    keep: dict[str, str] = {}
    todo = [Requirement(r) for r in reqs]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in skip or name in keep or name not in items:
            continue
        keep[name] = items[name]["version"]
        for dep in map(Requirement, items[name].get("requires_dist") or []):
            extras = [""] + sorted(req.extras)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e})
                                         for e in extras):
                todo.append(dep)
    return keep


def download_wheels(dest: Path, has: tuple[str, ...] = KAGGLE_HAS,
                    python_version: str = KAGGLE_PYTHON,
                    platforms: tuple[str, ...] = KAGGLE_PLATFORMS) -> list[Path]:
    """Wheels of the kit's requirements the target lacks, and of their dependencies, in `dest`."""
    skip = {canonical(n) for n in has}
    reqs = [r for r in requirements() if canonical(Requirement(r).name) not in skip]
    target = target_args(python_version, platforms)
    dest.mkdir(parents=True, exist_ok=True)
    wheel_roots(reqs, dest, target)
    pins = resolve_tree(reqs, dest, target, has, python_version)
    have = {(canonical(w.name.split("-")[0]), w.name.split("-")[1]) for w in dest.glob("*.whl")}
    extra = [f"{n}=={v}" for n, v in sorted(pins.items()) if (n, v) not in have]
    if extra:
        pip("download", "-q", "--no-deps", "-d", str(dest), *target, *extra)
    return sorted(dest.glob("*.whl"))


def copy_kit(dest: Path) -> list[str]:
    """Copy the kit's tracked files (`git ls-files`) into `dest`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=kit_root(), check=True,
                           capture_output=True, text=True).stdout.split("\0")
    files = [f for f in files if f and (kit_root() / f).is_file()]
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kit_root() / name, dest / name)
    return files


def build_offline_kit(out: str | Path = OUT, weights: tuple[str, ...] = (),
                      has: tuple[str, ...] = KAGGLE_HAS, python_version: str = KAGGLE_PYTHON,
                      platforms: tuple[str, ...] = KAGGLE_PLATFORMS) -> Path:
    """Build the dataset folder at `out` (relative to the kit root): kit files, wheels/,
    weights/. Built beside it and renamed into place, so a failed build leaves nothing."""
    out = resolve(out)
    missing = [w for w in weights if not Path(w).is_file()]
    if missing:
        raise FileNotFoundError(f"weight files not found: {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        copy_kit(tmp)
        download_wheels(tmp / WHEELS, has, python_version, platforms)
        for w in weights:
            (tmp / "weights").mkdir(exist_ok=True)
            shutil.copy2(w, tmp / "weights" / Path(w).name)
        (tmp / "dataset-metadata.json").write_text(json.dumps(METADATA, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def folder_size(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help="dataset folder (default %(default)s)")
    parser.add_argument("--weights", nargs="*", default=[], help="weight files to include")
    parser.add_argument("--has", default=",".join(KAGGLE_HAS),
                        help="comma-separated packages the target already has (default: "
                             "KAGGLE_HAS; '' for none; torch/torchvision are always left out)")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON)
    parser.add_argument("--platform", nargs="*", default=list(KAGGLE_PLATFORMS))
    args = parser.parse_args(argv)
    has = tuple(n for n in args.has.split(",") if n.strip())
    out = build_offline_kit(args.out, tuple(args.weights), has, args.python_version,
                            tuple(args.platform))
    wheels = sorted(p.name for p in (out / WHEELS).glob("*.whl"))
    print(f"{out}: {folder_size(out) / 1e6:.1f} MB, {len(wheels)} wheels "
          f"({', '.join(w.split('-')[0] for w in wheels)}), "
          f"{len(list((out / 'weights').glob('*')))} weight files.\n"
          "Upload it as a Kaggle dataset and attach it to the notebook (README: Kaggle offline).")
    return out


if __name__ == "__main__":
    main()
