"""The setup cell: one source (notebooks/setup_cell.py), the same first code cell in every
notebook. It leaves an importable kit alone, finds a checkout or a bundle (unpacked, read-only
or zipped), clones KIT_REPO, or stops with the ways in; it changes no installed package.
The badges follow the cell's KIT_REPO, and no file of the kit names an invented address."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from utils import bootstrap
from utils.dev import publish
from utils.dev.pipeline import list_notebooks
from utils.places import kit_root

NOTEBOOKS = list_notebooks()
# Run before the cell: forget the kit's editable install and any sys.path entry of the kit, as
# in a fresh Colab or Kaggle kernel (the kit's requirements stay installed).
FORGET_KIT = f"""
import sys
from pathlib import Path
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path({str(kit_root())!r})]
"""
WAYS = ("1. the kit's zip", "2. a clone: set KIT_REPO", "3. a checkout")


def setup_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c.get("id") == "setup"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_starts_with_the_setup_cell_from_its_one_source(path):
    cells = json.loads(path.read_text())["cells"]
    setup = setup_cells(path)
    assert len(setup) == 1, f"{path.name}: needs exactly one cell with id 'setup'"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code[0].get("id") == "setup", f"{path.name}: the setup cell must be the first code cell"
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), path.name
    assert "".join(setup[0]["source"]) == publish.setup_source(), (
        f"{path.name}: differs from notebooks/setup_cell.py; run python -m utils.dev.publish")
    assert not setup[0]["outputs"] and setup[0]["execution_count"] is None


def test_setup_cell_fits_a_screen_and_names_no_address_until_published():
    source = publish.setup_source()
    lines = source.splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= 100
    assert source.count("print(") == 1
    assert any(line.startswith('KIT_REPO = "') for line in lines[:6])  # near the top
    repo = publish.kit_repo(source)
    assert repo == "" or re.fullmatch(r"(https://|git@|file://)\S+", repo)


def test_publish_writes_the_address_into_every_cell_and_the_badges_and_takes_it_back(tmp_path):
    root = tmp_path / "kit"
    for name in ("notebooks", "README.md"):
        (shutil.copytree if name == "notebooks" else shutil.copy2)(kit_root() / name, root / name)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", remote], check=True)
    with pytest.raises(ValueError, match="not a git repository"):
        publish.publish((tmp_path / "nowhere").as_uri(), root=root)
    changed = publish.publish(remote.as_uri(), root=root)  # reachable, but not on GitHub
    cells = {"".join(setup_cells(p)[0]["source"]) for p in sorted(root.glob("notebooks/0*.ipynb"))}
    assert len(cells) == 1 and f'KIT_REPO = "{remote.as_uri()}"' in cells.pop()
    assert root / "notebooks" / "setup_cell.py" in changed
    assert "badges need a GitHub address" in (root / "README.md").read_text()
    github = "https://github.com/huggingface/pytorch-image-models"  # a real repository
    publish.publish(github, branch="dev", check=False, root=root)
    for readme in ("README.md", "notebooks/README.md"):
        text = (root / readme).read_text()
        colab = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", text)
        kaggle = re.findall(r"https://kaggle\.com/kernels/welcome\?src=([^)\s]+)", text)
        assert len(colab) == len(kaggle) == len(NOTEBOOKS), readme
        slug = github.removeprefix("https://github.com/")
        assert colab[0] == f"{slug}/blob/dev/notebooks/{NOTEBOOKS[0].name}"
        assert kaggle[-1] == f"{github}/blob/dev/notebooks/{NOTEBOOKS[-1].name}"
    publish.publish("", root=root)
    assert publish.kit_repo(publish.setup_source(root)) == ""
    for readme in ("README.md", "notebooks/README.md"):
        text = (root / readme).read_text()
        assert "colab.research.google.com/github" not in text and publish.UNPUBLISHED in text
        assert text == (kit_root() / readme).read_text()  # back to the committed state
    for p in sorted(root.glob("notebooks/*.ipynb")):
        assert p.read_text() == (kit_root() / "notebooks" / p.name).read_text()


def test_badges_follow_the_cells_address():
    repo = publish.kit_repo(publish.setup_source())
    names = {p.name for p in NOTEBOOKS}
    for readme in ("README.md", "notebooks/README.md"):
        text = (kit_root() / readme).read_text()
        colab = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", text)
        if not repo:
            assert not colab and publish.UNPUBLISHED in text, readme
            continue
        slug = publish.GITHUB.fullmatch(repo).group(1)
        assert colab and all(c.startswith(f"{slug}/blob/") and c.rsplit("/", 1)[1] in names
                             for c in colab), readme


# Addresses the kit may name: each is a real page or file (checked when it was added). A URL
# with a {placeholder}, or a stem ending in "/" or "=" that code completes, is a template, not an
# address. Published badges follow KIT_REPO.
REAL_ADDRESSES = (
    "https://colab.research.google.com/assets/colab-badge.svg",
    "https://kaggle.com/static/images/open-in-kaggle.svg",
    "https://docs.lightly.ai",
    "https://huggingface.co/MahmoodLab/uni",
    "https://www.gsea-msigdb.org/gsea/msigdb",
    "https://github.com/huggingface/pytorch-image-models",  # timm: publish's GitHub example
    "https://github.com/jjuhyeok/KUMC-Medical_AI",  # the DACON winners' public repository
    "http://127.0.0.1:9",  # the discard port: first contact's blocked proxy (no network)
)
INVENTED = "dacon-" + "mai-kit"  # the owner the kit once made up (spelled apart: not a hit here)
URL = re.compile(r"https?://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+[^\s)\"'<>`\]\\,]*")


def test_no_file_names_an_invented_address():
    listed = subprocess.run(["git", "ls-files"], cwd=kit_root(), capture_output=True,
                            text=True, check=True).stdout.split()
    repo = publish.kit_repo(publish.setup_source())
    bad = []
    for name in listed:
        path = kit_root() / name
        if not path.is_file() or path.suffix in (".png", ".safetensors", ".gmt"):
            continue
        text = path.read_text(errors="replace")
        if INVENTED in text:
            bad.append(f"{name}: {INVENTED}")
        for url in URL.findall(text):
            allowed = (*REAL_ADDRESSES, *([repo] if repo else []),
                       *(["https://colab.research.google.com/github/",
                          "https://kaggle.com/kernels/welcome?src="] if repo else []))
            template = "{" in url or url.endswith(("/", "="))
            if not template and not url.rstrip(".").startswith(allowed):
                bad.append(f"{name}: {url}")
    assert not bad, "addresses not known to exist:\n" + "\n".join(bad)


# --- running the cell --------------------------------------------------------------------------

def run_cell(cwd: Path, env: dict[str, str], times: int = 2, root: Path | None = None,
             after: str = "") -> subprocess.CompletedProcess:
    """Execute the setup cell in a fresh Python that has the kit's requirements but not the kit
    (`times` in a row: from the second on, the kit is importable), then `after`. The platform
    folders (/kaggle/input, /kaggle/working, /content, My Drive) hang from `root`
    (KIT_PLATFORM_ROOT; by default an empty folder: no platform)."""
    code = FORGET_KIT + "\n".join([publish.setup_source()] * times) + "\n" + after
    env = {k: v for k, v in os.environ.items() if k != "KIT_REPO"} | {
        "KIT_PLATFORM_ROOT": str(root or cwd / "no-platform-folders")} | env
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env=env)


def small_kit(folder: Path) -> Path:
    """The files the setup cell needs from a kit: utils/ and the requirements files."""
    shutil.copytree(kit_root() / "utils", folder / "utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "requirements-extras.txt"):
        shutil.copy2(kit_root() / name, folder / name)
    return folder


def test_importable_kit_is_left_alone_and_quick():
    code = f"import time; t = time.perf_counter()\n{publish.setup_source()}\n" \
           "print(f'{time.perf_counter() - t:.3f}')"
    out = subprocess.run([sys.executable, "-c", code], cwd=kit_root(), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == f"mai-kit importable: {kit_root()} [checkout] (requirements present)"
    assert len(out) == 2 and float(out[1]) < 2.0, out


def test_no_kit_and_no_kit_repo_lists_the_ways_in_and_stops_cleanly(tmp_path):
    done = run_cell(tmp_path, {})
    assert done.returncode == 1 and done.stdout == ""
    assert "was not found and KIT_REPO is empty" in done.stderr
    assert all(way in done.stderr for way in WAYS), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 10


def test_attached_read_only_bundle_is_copied_and_its_wheels_and_weights_linked(tmp_path):
    root = tmp_path / "platform"
    dataset = small_kit(root / "kaggle" / "input" / "mai-kit-bundle" / "mai-kit")
    for folder in ("wheels", "weights"):
        (dataset / folder).mkdir()
    (dataset / "weights" / "lite0.safetensors").write_bytes(b"0" * 10)
    user = root / "kaggle" / "working"
    user.mkdir()
    for p in [dataset, *dataset.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        done = run_cell(user, {"KIT_REPO": "file:///nowhere"}, root=root)
    finally:
        for p in [dataset, *dataset.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stderr
    kit = user / "mai-kit"
    assert done.stdout.splitlines() == [
        f"mai-kit found in {dataset}: {kit} [copy] (requirements present)",
        f"mai-kit importable: {kit} [copy] (requirements present)"]
    assert (kit / "utils" / "places.py").is_file()
    assert (kit / "weights").resolve() == dataset / "weights"  # linked, not copied
    assert (kit / "wheels").is_symlink() and (kit / "weights" / "lite0.safetensors").is_file()


def test_zipped_bundle_beside_the_notebook_is_unpacked(tmp_path):
    kit = small_kit(tmp_path / "src" / "mai-kit")
    (kit / bootstrap.MANIFEST).write_text(json.dumps({"version": "9.9", "commit": "abcdef0123"}))
    user = tmp_path / "user"
    user.mkdir()
    with zipfile.ZipFile(user / "mai-kit-bundle (1).zip", "w") as z:
        for f in kit.rglob("*"):
            z.write(f, f.relative_to(kit.parent).as_posix())
    done = run_cell(user, {})
    assert done.returncode == 0, done.stderr
    first, again = done.stdout.splitlines()
    assert first == (f"mai-kit found in {user / 'mai-kit-bundle (1).zip'}: {user / 'mai-kit'} "
                     "[bundle 9.9 (abcdef0)] (requirements present)")
    assert again.startswith("mai-kit importable: ")
    stamp = (user / "mai-kit" / bootstrap.STAMP).read_text()
    (user / "mai-kit" / "runs").mkdir()  # a run of the user's
    done = run_cell(user, {}, times=1)  # a new kernel: the unpacked copy is used as it is
    assert done.stdout.startswith(f"mai-kit found in {user / 'mai-kit-bundle (1).zip'}: "
                                  f"{user / 'mai-kit'} "), done.stdout
    assert (user / "mai-kit" / bootstrap.STAMP).read_text() == stamp
    assert (user / "mai-kit" / "runs").is_dir()


# --- any zip of the kit, anywhere a platform attaches it -----------------------------------------

def attach(archive: Path, folder: Path, unpacked: bool, name: str | None = None) -> Path:
    """`archive` in `folder` as a platform shows it: the zip (renamed to `name`), or unpacked."""
    folder.mkdir(parents=True, exist_ok=True)
    if not unpacked:
        return Path(shutil.copy2(archive, folder / (name or archive.name)))
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    return folder / zipfile.ZipFile(archive).namelist()[0].split("/")[0]


IMPORTED = "import utils.bootstrap as b; print('imported', Path(b.__file__).parent.parent)"
PLATFORMS = {  # where a user's attached kit lands: (the notebook's folder, the kit's folder)
    "kaggle": ("kaggle/working", "kaggle/input/mai-kit"),
    "kaggle-2026": ("kaggle/working", "kaggle/input/datasets/someone/mai-kit"),
    "colab": ("content", "content"),
    "drive": ("content", "content/drive/MyDrive/code"),
}


@pytest.mark.parametrize("unpacked", [False, True], ids=["zipped", "unpacked"])
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_githubs_zip_is_found_by_content_and_imports_in_the_same_run(github_zip, tmp_path,
                                                                     platform, unpacked):
    root = tmp_path / "platform"
    work, where = (root / p for p in PLATFORMS[platform])
    work.mkdir(parents=True, exist_ok=True)
    source = attach(github_zip, where, unpacked, name="kit download (2).zip")
    done = run_cell(work, {}, times=1, root=root, after=IMPORTED)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    kit = source if unpacked and platform == "colab" else work / "mai-kit"
    assert done.stdout.splitlines() == [
        f"mai-kit found in {source}: {kit} [copy] (requirements present)", f"imported {kit}"]


def test_git_archive_without_a_top_folder_beside_the_notebook(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    subprocess.run(["git", "archive", "--format=zip", "-o", user / "kit.zip", "HEAD"],
                   cwd=kit_root(), check=True)
    done = run_cell(user, {}, times=1, after=IMPORTED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"imported {user / 'mai-kit'}"


def test_a_kit_five_folders_under_kaggle_input_is_found_six_is_not(github_zip, tmp_path):
    root = tmp_path / "platform"
    (root / "kaggle" / "working").mkdir(parents=True)
    deep = attach(github_zip, root / "kaggle/input/datasets/someone/kit/a", unpacked=True)
    assert len(deep.relative_to(root / "kaggle/input").parts) == 5
    assert run_cell(root / "kaggle" / "working", {}, times=1, root=root).returncode == 0
    shutil.move(deep, deep.parent / "b" / deep.name)
    shutil.rmtree(root / "kaggle" / "working" / "mai-kit")  # a new session: nothing copied yet
    done = run_cell(root / "kaggle" / "working", {}, times=1, root=root)
    assert done.returncode == 1 and "was not found" in done.stderr


def test_a_cut_zip_gets_one_message_naming_it(github_zip, tmp_path):
    root = tmp_path / "platform"
    (root / "kaggle" / "working").mkdir(parents=True)
    cut = root / "kaggle/input/datasets/someone/mai-kit/mai-kit-main.zip"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(github_zip.read_bytes()[: github_zip.stat().st_size * 2 // 3])
    done = run_cell(root / "kaggle" / "working", {}, times=1, root=root)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"mai-kit: {cut} is not a readable zip (cut short while uploading or downloading?). "
        "Download and upload it again, or unzip it and upload the folder; then run this cell "
        "again."]


def test_two_copies_one_line_says_which_is_used(github_zip, tmp_path):
    root = tmp_path / "platform"
    zipped = attach(github_zip, root / "content", unpacked=False)
    unpacked = attach(github_zip, root / "content/drive/MyDrive", unpacked=True)
    cut = root / "content" / "old-kit.zip"
    cut.write_bytes(b"PK\x03\x04 half an upload")
    done = run_cell(root / "content", {}, times=1, root=root)
    assert done.returncode == 0, done.stderr
    first, note = done.stdout.splitlines()
    assert first.startswith(f"mai-kit found in {zipped}: {root / 'content' / 'mai-kit'} ")
    assert note == (f"mai-kit: 2 copies found; using {zipped} (not {unpacked}: remove the copies "
                    f"you do not want); not a readable zip, left aside: {cut}")


def test_kit_is_cloned_from_kit_repo_set_in_the_environment(tmp_path):
    remote = small_kit(tmp_path / "remote")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "kit"]):
        subprocess.run([*git, *args], cwd=remote, check=True)
    user = tmp_path / "user"
    user.mkdir()
    done = run_cell(user, {"KIT_REPO": remote.as_uri()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (f"mai-kit cloned {remote.as_uri()}: {user / 'mai-kit'}"
                                           " [checkout] (requirements present)")
    assert (user / "mai-kit" / ".git").is_dir()


def test_failed_clone_says_why_and_the_ways_in_without_a_traceback(tmp_path):
    done = run_cell(tmp_path, {"KIT_REPO": (tmp_path / "missing").as_uri()})
    assert done.returncode == 1 and done.stdout == ""
    assert f"git clone {(tmp_path / 'missing').as_uri()} failed" in done.stderr
    assert all(way in done.stderr for way in WAYS) and "Traceback" not in done.stderr


# --- what the cell installs -------------------------------------------------------------------

def test_requirements_split_runtime_extras_and_dev_tools():
    runtime = {bootstrap.requirement_name(r) for r in bootstrap.read_requirements()}
    extras = {bootstrap.requirement_name(r) for r in bootstrap.read_requirements("requirements-"
                                                                                "extras.txt")}
    dev = (kit_root() / "requirements-dev.txt").read_text()
    assert {"timm", "numpy", "albumentations", "ruptures", "torch"} <= runtime
    assert extras == {"lightly", "lpips", "gseapy", "torchstain"} and not runtime & extras
    tools = {"papermill", "nbformat", "ipykernel", "jupyterlab", "pytest", "ruff"}
    assert not runtime & tools and all(re.search(rf"^{t}\b", dev, re.M) for t in tools)
    assert "-r requirements.txt" in dev and "-r requirements-extras.txt" in dev
    assert bootstrap.check_requirements(bootstrap.read_requirements()) == ([], [])  # kit venv
    assert bootstrap.check_requirements(["numpy>=999", "not-a-package-xyz", "numpy>=1"]) == (
        ["not-a-package-xyz"], [("numpy>=999", bootstrap.metadata.version("numpy"))])
    pins = bootstrap.installed_pins()
    assert f"numpy=={bootstrap.metadata.version('numpy')}" in pins and len(pins) > 50


def cell_in_a_small_kit(tmp_path: Path, runtime: str, extras: str = "") -> Path:
    """A checkout-like kit with its own requirements files, and a notebooks/ folder to run in."""
    kit = small_kit(tmp_path / "kit")
    (kit / "requirements.txt").write_text(runtime)
    (kit / "requirements-extras.txt").write_text(extras)
    (kit / "notebooks").mkdir()
    return kit


def test_too_old_package_is_not_swapped_the_cell_says_what_to_run_and_asks_for_a_restart(tmp_path):
    kit = cell_in_a_small_kit(tmp_path, "numpy>=999\npackaging>=1\n")
    done = run_cell(kit / "notebooks", {}, times=1)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    numpy = bootstrap.metadata.version("numpy")
    assert f"numpy {numpy} (the kit needs numpy>=999)" in done.stderr
    assert '%pip install "numpy>=999"' in done.stderr and "restart" in done.stderr
    assert "packaging" not in done.stderr.split("needs:")[1].split("The setup")[0]


def test_missing_torch_is_left_to_the_platform(tmp_path):
    kit = cell_in_a_small_kit(tmp_path, "torch-not-installed-here>=1\n")
    bootstrap_path = kit / "utils" / "bootstrap.py"
    text = bootstrap_path.read_text()
    bootstrap_path.write_text(text.replace('PLATFORM = ("torch", "torchvision")',
                                           'PLATFORM = ("torch-not-installed-here",)'))
    done = run_cell(kit / "notebooks", {}, times=1)
    assert done.returncode == 1 and "platform's own builds" in done.stderr, done.stderr


def fresh_python(tmp_path: Path) -> Path:
    """A venv that sees the kit venv's packages (.pth) but installs into its own folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "kit-venv.pth").write_text(
        next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    return venv / "bin" / "python"


def probe_wheel(folder: Path, name: str = "kit_probe", needs: str = "") -> Path:
    """A tiny pure-Python wheel built here (depending on `needs`), for offline installs."""
    src = folder / "src"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("VALUE = 42\n")
    deps = f'"{needs}"' if needs else ""
    (src / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n'
                                        f'dependencies = [{deps}]\n'
                                        '[build-system]\nrequires = ["setuptools"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", folder / "wheels", src], check=True)
    return folder / "wheels"


def test_ensure_installs_an_on_demand_package_from_the_bundle_with_one_line(tmp_path):
    kit = cell_in_a_small_kit(tmp_path, "packaging>=1\n", "kit-probe>=1.0  # a test\n")
    probe_wheel(kit)
    python = fresh_python(tmp_path)
    code = (FORGET_KIT + f"sys.path.insert(0, {str(kit)!r})\n"
            "from utils.bootstrap import ensure\n"
            "ensure('kit_probe', '04_adapt'); ensure('kit-probe', '04_adapt')\n"
            "import kit_probe; print(kit_probe.VALUE)")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"04_adapt needs kit-probe>=1\.0: installing it from the bundle … "
                        r"done in \d+ s", lines[0]), lines
    assert lines[1:] == ["42"]  # the second call was silent
    with pytest.raises(ValueError, match="not listed"):
        bootstrap.ensure("numpy", "nobody")


def test_install_failure_names_the_package_the_python_and_the_build_command(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # internet off
    with pytest.raises(RuntimeError) as err:
        bootstrap.pip_install(["not-a-package-xyz"], wheels=tmp_path)
    version = bootstrap.python_version()
    assert (f"The bundle ({tmp_path}) has no wheel of not-a-package-xyz for Python {version}"
            in str(err.value)), err.value
    assert f"python -m utils.dev.bundle --python {version}" in str(err.value)
    assert len(str(err.value).splitlines()) <= 12
    assert "keeping every installed package as it is" in str(err.value)


def test_bundle_wheels_needing_newer_packages_than_the_runtime_has_say_so(tmp_path, monkeypatch):
    wheels = probe_wheel(tmp_path, needs="packaging>=999")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # internet off
    with pytest.raises(RuntimeError) as err:
        bootstrap.pip_install(["kit-probe"], wheels=wheels)
    assert "do not fit the packages this runtime has" in str(err.value), err.value
    assert "packaging" in str(err.value) and "Turn the internet on" in str(err.value)


def test_a_wheel_the_bundle_lacks_comes_from_the_index_when_it_can_be_reached(tmp_path):
    kit = cell_in_a_small_kit(tmp_path, "packaging>=1\n", "kit-probe>=1.0\n")
    wheel = next(probe_wheel(tmp_path / "built").glob("*.whl"))
    index = tmp_path / "index" / "kit-probe"  # stands for PyPI: a simple index on disk
    index.mkdir(parents=True)
    shutil.copy2(wheel, index)
    (index / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')
    (kit / "wheels").mkdir()  # a bundle without it
    python = fresh_python(tmp_path)
    code = (FORGET_KIT + f"sys.path.insert(0, {str(kit)!r})\n"
            "from utils.bootstrap import ensure\nensure('kit-probe', '04_adapt')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {
        "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index.parent.as_uri()}
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(from the bundle and PyPI)"), done.stdout


# --- the start page ---------------------------------------------------------------------------

def sections(text: str) -> dict[str, str]:
    """`## heading` → the text under it."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_readme_starts_each_platform_in_five_steps_from_zips_the_setup_cell_takes():
    text = (kit_root() / "README.md").read_text()
    start = sections(text)["Start here"]
    platforms = dict(zip(*[iter(re.split(r"^### (.+)$", start, flags=re.M)[1:])] * 2))
    assert {"Colab", "Kaggle"} <= set(platforms) and any(p.startswith("Your machine")
                                                         for p in platforms)
    for name, steps in platforms.items():
        numbered = re.findall(r"^(\d+)\. ", steps, flags=re.M)
        assert 1 <= len(numbered) <= 5 and numbered == [str(i + 1) for i in
                                                        range(len(numbered))], name
    assert "Download ZIP" in start and "mai-kit-bundle.zip" in start  # both found by content
    assert "Change runtime type" in platforms["Colab"].split("\n2. ")[0]  # before any upload
    assert "make demo" in text and "make test" in text
    for readme in ("README.md", "notebooks/README.md"):
        assert "block CV" not in (kit_root() / readme).read_text(), readme
