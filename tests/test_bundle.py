"""The offline bundle, built by the kit's own command from a clean clone or from an unpacked
download (no git, a bare venv): one zip for Colab and Kaggle, with the kit's code, the wheels both
platforms lack for Python 3.11, 3.12 and 3.13 (a source-only dependency built into a pure wheel)
and optional weights; the release workflow builds it on a tag and attaches it. Needs the package
index the first time; the wheels and the index's answers are cached in dist/wheel-cache, so
reruns are fast."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml
from conftest import KIT_ROOT, WHEEL_CACHE, build_bundle

from utils.dev import bundle
from utils.dev.bundle import keep_tree, sizes, target_args


def find_python(version: str) -> Path | None:
    """An interpreter of `version` beside this one (pyenv and similar layouts), if any."""
    found = [p for p in Path(sys.base_prefix).parent.glob(f"{version}.*/bin/python{version}")
             if subprocess.run([p, "-c", ""], capture_output=True).returncode == 0]
    return found[0] if found else None


def test_the_tree_walk_keeps_what_the_platforms_lack_and_follows_requested_extras():
    items = [{"name": "timm", "version": "1.0", "requires_dist": ["torch", "huggingface-hub",
                                                                   "pyyaml"]},
             {"name": "lightly", "version": "1.6", "requires_dist": [
                 "hydra-core>=1.0", "numpy", 'av; extra == "video"',
                 'tomli; python_version < "3.11"']},
             {"name": "hydra-core", "version": "1.3", "requires_dist": [
                 "antlr4-python3-runtime==4.9.*", "omegaconf"]},
             {"name": "antlr4-python3-runtime", "version": "4.9.3"},
             {"name": "omegaconf", "version": "2.3", "requires_dist": ["PyYAML"]},
             {"name": "av", "version": "12"}, {"name": "tomli", "version": "2"},
             {"name": "numpy", "version": "2"}, {"name": "torch", "version": "2.5"},
             {"name": "huggingface_hub", "version": "0.3"}, {"name": "pyyaml", "version": "6"}]
    kept = keep_tree(["timm>=1", "lightly"], items, ("numpy", "pyyaml"), "3.11")
    assert kept == {"timm": "1.0", "lightly": "1.6", "hydra-core": "1.3", "omegaconf": "2.3",
                    "antlr4-python3-runtime": "4.9.3", "huggingface-hub": "0.3"}
    assert "av" in keep_tree(["lightly[video]"], items, (), "3.11")
    assert "tomli" in keep_tree(["lightly"], items, (), "3.10")
    args = target_args("3.12")
    assert args[args.index("--python-version") + 1] == "3.12" and "cp312" in args


def test_the_bundle_builds_from_a_clean_clone_for_colab_and_kaggle(kit_clone, tmp_path):
    out, seconds = build_bundle(kit_clone, tmp_path / "mai-kit-bundle.zip")
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        info = json.loads(z.read("mai-kit/BUNDLE.json"))
        z.extractall(tmp_path / "unpacked")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=kit_clone, capture_output=True,
                          text=True).stdout.strip()
    assert info["commit"] == head and info["pythons"] == ["3.11", "3.12", "3.13"]
    listed = subprocess.run(["git", "ls-files"], cwd=kit_clone, capture_output=True,
                            text=True).stdout.split()
    assert {f"mai-kit/{f}" for f in listed} <= set(names)  # the tracked code, all of it
    wheels = [Path(n).name for n in names if n.endswith(".whl")]
    for python in ("cp311", "cp312", "cp313"):  # compiled wheels for the platforms' Pythons
        assert any(w.startswith("ruptures-") and f"-{python}-" in w for w in wheels), python
    assert any(re.match(r"antlr4_python3_runtime-4\.9\.\d+-py3-none-any\.whl", w) for w in wheels)
    packages = {w.split("-")[0] for w in wheels}
    assert {"lightly", "hydra_core", "timm", "albumentations", "grad_cam", "lpips", "torchstain",
            "gseapy", "ruptures"} <= packages
    assert not {"torch", "torchvision", "numpy", "scipy"} & packages  # the platforms' own
    for python, pins in info["wheels"].items():  # each Python's wheels install on that Python
        exe = find_python(python)
        if exe:
            done = subprocess.run(
                [exe, "-m", "pip", "download", "-q", "--no-deps", "--no-index", "--find-links",
                 tmp_path / "unpacked" / "mai-kit" / "wheels", "-d", tmp_path / f"py{python}",
                 *(f"{n}=={v}" for n, v in pins.items())], capture_output=True, text=True,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
                     "PIP_CONFIG_FILE": os.devnull})
            assert done.returncode == 0, done.stderr
        where = "installable there (pip download, no index)" if exe else "no such Python here"
        print(f"\n[bundle] {len(pins)} packages for Python {python}: {where}")
    mb = {k: f"{v / 1e6:.1f}" for k, v in sizes(out).items()}
    print(f"[bundle] {out.stat().st_size / 1e6:.1f} MB (code {mb['code']}, wheels "
          f"{mb['wheels']}), {len(wheels)} wheels, built in {seconds:.0f} s")
    files = sorted((KIT_ROOT.parent / "shared" / "weights").glob("tf_efficientnet_lite*"
                                                                   ".safetensors"))
    if files:
        weighted, seconds = build_bundle(kit_clone, tmp_path / "with-weights.zip", "--weights",
                                         *files)
        with zipfile.ZipFile(weighted) as z:
            assert {f"mai-kit/weights/{f.name}" for f in files} <= set(z.namelist())
        print(f"[bundle] with {', '.join(f.name for f in files)}: "
              f"{weighted.stat().st_size / 1e6:.1f} MB (weights "
              f"{sizes(weighted)['weights'] / 1e6:.1f}; {seconds:.0f} s)")
    shutil.rmtree(tmp_path / "unpacked")


def test_a_missing_weight_file_is_refused_before_anything_is_written(tmp_path):
    done = subprocess.run([sys.executable, "-m", "utils.dev.bundle", "--out",
                           str(tmp_path / "b.zip"), "--weights", str(tmp_path / "none.st")],
                          cwd=KIT_ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "weight files not found" in done.stderr
    assert not (tmp_path / "b.zip").exists()


def unpacked_download(folder: Path) -> Path:
    """The kit as GitHub's "Download ZIP" unpacks: `git archive` of HEAD, no .git."""
    kit = folder / "mai-kit-main"
    kit.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=KIT_ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", kit], input=archive, check=True)
    return kit


def test_a_download_lists_the_same_files_as_git_and_leaves_out_what_git_ignores(tmp_path):
    kit = unpacked_download(tmp_path)
    listed = subprocess.run(["git", "ls-files"], cwd=KIT_ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    for used in ("runs/a/cv.json", "data/open/train.csv", "cache/x.npy", "utils/__pycache__/a.pyc",
                 "wheels/a.whl", "mai_kit.egg-info/PKG-INFO", "notebooks/runs/b.json"):
        (kit / used).parent.mkdir(parents=True, exist_ok=True)
        (kit / used).write_text("a user's")
    assert bundle.kit_files(kit) == sorted(listed)
    assert bundle.kit_files(KIT_ROOT) == listed  # a checkout: git's own list


def test_the_bundle_builds_from_an_unpacked_download_in_a_bare_venv(tmp_path):
    """No git (not on PATH), no make, no package but pip: the cached wheels make it quick."""
    kit = unpacked_download(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    bare = subprocess.run([python, "-c", "import packaging"], capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(tmp_path / "venv" / "bin")  # no git
    done = subprocess.run([python, "-m", "utils.dev.bundle", "--cache", WHEEL_CACHE], cwd=kit,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with zipfile.ZipFile(kit / bundle.OUT) as z:
        info = json.loads(z.read("mai-kit/BUNDLE.json"))
        names = z.namelist()
    assert info["commit"] == "" and info["version"] == bundle.kit_version()
    assert info["pythons"] == ["3.11", "3.12", "3.13"]
    assert {"mai-kit/utils/bootstrap.py", "mai-kit/.github/workflows/release.yml"} <= set(names)
    assert not [n for n in names if "/dist/" in n or "/.venv/" in n]
    print(f"\n[bundle] from a download in a bare venv (packaging installed: "
          f"{bare.returncode == 0}): {(kit / bundle.OUT).stat().st_size / 1e6:.0f} MB")


def test_the_release_workflow_builds_the_bundle_on_a_tag_and_attaches_it():
    flow = yaml.safe_load((KIT_ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert flow[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    steps = flow["jobs"]["bundle"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    build = next(s["run"] for s in steps if "utils.dev.bundle" in s.get("run", ""))
    assert build == f"python -m utils.dev.bundle --out {bundle.OUT}"
    attach = next(s for s in steps if s.get("uses", "").startswith("softprops/action-gh-release"))
    assert attach["with"]["files"] == bundle.OUT
    assert flow["permissions"]["contents"] == "write"
