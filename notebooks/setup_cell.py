# Setup (the same cell in every notebook): find the kit, or fetch it; then check this runtime.
import os, subprocess, sys, zipfile  # noqa: E401, I001 (one cell, stdlib only)
from pathlib import Path

KIT_REPO = ""  # the kit's git URL, cloned when no copy is found ("": the environment's KIT_REPO)

WAYS = """Three ways in:
  1. the kit's zip (GitHub's "Download ZIP", or mai-kit-bundle.zip from a release), zipped or
     unpacked: upload it to /content or My Drive (mount Drive first) on Colab; attach it as a
     dataset on Kaggle (Add Input); or put it beside this notebook;
  2. a clone: set KIT_REPO at the top of this cell to the kit's git URL (internet on);
  3. a checkout: clone the kit and open this notebook from its notebooks/ folder.
Then run this cell again."""
try:  # importable already: a checkout, `pip install -e .`, or this cell ran before
    from utils.bootstrap import setup_kit
    how, found, broken = "importable", [], []
except ImportError:  # a folder or zip (any name) holding utils/bootstrap.py, at most 1 folder in
    KIT_REPO, here = KIT_REPO or os.environ.get("KIT_REPO", ""), Path.cwd()
    root = Path(os.environ.get("KIT_PLATFORM_ROOT") or "/")  # where /kaggle and /content hang
    work = next((p for p in (root / "kaggle/working", root / "content") if p.is_dir()), here)
    kit, found, broken = work / "mai-kit", [], []
    for top, depth in {here.parent: 0, here: 2, root / "content": 2,
                       root / "content/drive/MyDrive": 2, root / "kaggle/input": 5}.items():
        for folder, dirs, files in os.walk(top):
            deeper = len(Path(folder).relative_to(top).parts) < depth
            dirs[:] = [d for d in sorted(dirs) if deeper and d[0] != "." and
                       Path(folder, d) not in (kit, root / "content/drive")]
            if Path(folder, "utils/bootstrap.py").is_file():
                dirs[:], found = [], [*found, (Path(folder), None)]
            for name in sorted(f for f in files if f.lower().endswith(".zip")):
                try:
                    with zipfile.ZipFile(Path(folder, name)) as z:
                        found += [(Path(folder, name), n[:-18]) for n in z.namelist() if n.count(
                            "/") <= 2 and Path(n).parts[-2:] == ("utils", "bootstrap.py")][:1]
                except (OSError, zipfile.BadZipFile):
                    broken.append(Path(folder, name))
    found = list(dict.fromkeys(found)) or ([(kit, None)] if (kit / "utils").is_dir() else [])
    if not found and broken:
        raise SystemExit(f"mai-kit: {', '.join(map(str, broken))} is not a readable zip (cut short "
                         "while uploading or downloading?). Download and upload it again, or "
                         "unzip it and upload the folder; then run this cell again.") from None
    if not found and not KIT_REPO:
        raise SystemExit(f"mai-kit (the code these notebooks call) was not found and KIT_REPO "
                         f"is empty. {WAYS}") from None
    if not found:
        git = subprocess.run(["git", "clone", "-q", "--depth", "1", KIT_REPO, str(kit)],
                             capture_output=True, text=True)
        if git.returncode:
            raise SystemExit(f"git clone {KIT_REPO} failed: {git.stderr.strip()}\n{WAYS}") from None
    for name in [m for m in sys.modules if m.split(".")[0] == "utils"]:
        del sys.modules[name]  # an unrelated `utils` imported before would shadow the kit
    sys.path.insert(0, os.path.join(found[0][0], found[0][1] or "") if found else str(kit))
    from utils.bootstrap import place_kit  # from inside the zip when the kit is one
    how = place_kit(*found[0], kit) if found else f"cloned {KIT_REPO}"
    from utils.bootstrap import setup_kit  # from the placed copy
print(setup_kit(how, found, broken))
