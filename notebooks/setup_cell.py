# Setup (the same cell in every notebook): find the kit, or fetch it; then check this runtime.
import glob, os, shutil, subprocess, sys, zipfile  # noqa: E401, I001 (one cell, stdlib only)
from pathlib import Path

KIT_REPO = ""  # the kit's git URL, cloned when no copy is found ("": the environment's KIT_REPO)

WAYS = """Three ways in:
  1. the bundle (mai-kit-bundle.zip, README "Get the kit"): upload it to /content
     or to My Drive (mount Drive first) on Colab; attach it as a dataset (Add Input) on Kaggle;
  2. a clone: set KIT_REPO at the top of this cell to the kit's git URL (internet on);
  3. a checkout: clone the kit and open this notebook from its notebooks/ folder.
Then run this cell again."""
try:  # importable already: a checkout, `pip install -e .`, or this cell ran before
    from utils.bootstrap import setup_kit
    how, source = "importable", None
except ImportError:
    KIT_REPO, here = KIT_REPO or os.environ.get("KIT_REPO", ""), Path.cwd()
    work = next((Path(p) for p in ("/kaggle/working", "/content") if Path(p).is_dir()), here)
    kit, looks = work / "mai-kit", os.environ.get("KIT_LOOK", "/content/*:/content/drive/"
                                                   "MyDrive/*:/kaggle/input/*:/kaggle/input/*/*")
    places = [here.parent, kit, *(Path(p) for g in [f"{here}/*", *looks.split(":")]
                                  for p in sorted(glob.glob(g)))]
    source = next((p for p in places if (p / "utils" / "bootstrap.py").is_file()), None)
    bundle = next((p for p in places if p.match("mai-kit*.zip") and p.is_file()), None)
    how = f"found in {source or bundle}" if source or bundle else f"cloned {KIT_REPO}"
    if source is None and bundle is not None:  # a zipped bundle: its top folder is mai-kit/
        zipfile.ZipFile(bundle).extractall(work)
    elif source is None and KIT_REPO:
        git = subprocess.run(["git", "clone", "-q", "--depth", "1", KIT_REPO, str(kit)],
                             capture_output=True, text=True)
        if git.returncode:
            raise SystemExit(f"git clone {KIT_REPO} failed: {git.stderr.strip()}\n{WAYS}") from None
    elif source is None:
        raise SystemExit(f"mai-kit (the code these notebooks call) was not found and KIT_REPO "
                         f"is empty. {WAYS}") from None
    elif source not in (here.parent, kit):  # e.g. a read-only Kaggle dataset: copy the code
        shutil.copytree(source, kit, ignore=shutil.ignore_patterns("wheels", "weights"),
                        dirs_exist_ok=True)
    kit = source if source == here.parent else kit
    sys.path.insert(0, str(kit))
    sys.modules.pop("utils", None)  # an unrelated `utils` imported before would shadow the kit
    from utils.bootstrap import setup_kit
print(setup_kit(how, source))
