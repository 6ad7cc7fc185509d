"""A newcomer on Kaggle: a folder holding only 00_quickstart.ipynb, GitHub's zip of the kit
attached as one dataset under the 2026 layout (/kaggle/input/datasets/<owner>/<slug>/) and
DACON's data, unpacked with its top folder, as another; Run All writes a valid
/kaggle/working/submission.csv. The platform folders hang from a temporary KIT_PLATFORM_ROOT,
and a first cell takes the developer's installed kit out of the kernel's import system (a
platform runtime has no kit)."""

import json
import shutil
import time

import nbformat
import pandas as pd
import pytest
from conftest import KIT_ROOT

from utils.data import load_data
from utils.dev.demo import write_demo
from utils.dev.pipeline import DEMO_MODEL
from utils.submit import validate_submission

FORGET_KIT = f"""import sys
from pathlib import Path
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path({str(KIT_ROOT)!r})]
sys.modules.pop("utils", None)"""


def place_quickstart(work, root, monkeypatch) -> None:
    """The quickstart alone in `work` (with FORGET_KIT first), the platform folders under
    `root`, and no kit variables in the environment."""
    notebook = nbformat.read(KIT_ROOT / "notebooks" / "00_quickstart.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(FORGET_KIT))
    nbformat.write(notebook, work / "00_quickstart.ipynb")
    monkeypatch.setenv("KIT_PLATFORM_ROOT", str(root))
    for name in ("KIT_DATA_DIR", "KIT_CACHE_DIR", "KIT_REPO"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.smoke
def test_quickstart_alone_with_githubs_zip_on_kaggle_writes_the_submission(github_zip, tmp_path,
                                                                           monkeypatch):
    import papermill

    root = tmp_path / "platform"
    work = root / "kaggle" / "working"
    work.mkdir(parents=True)
    kit_dataset = root / "kaggle" / "input" / "datasets" / "someone" / "mai-kit"
    kit_dataset.mkdir(parents=True)
    shutil.copy2(github_zip, kit_dataset / "mai-kit-main.zip")
    data = write_demo(root / "kaggle" / "input" / "datasets" / "someone" / "dacon-mai" / "open",
                      n_train=120, n_test=40, n_genes=200, seed=3)
    place_quickstart(work, root, monkeypatch)
    papermill.execute_notebook(str(work / "00_quickstart.ipynb"), str(tmp_path / "run.ipynb"),
                               parameters={"SMOKE": True, "OVERRIDES": DEMO_MODEL},
                               cwd=str(work), kernel_name="python3", progress_bar=False)
    text = json.dumps(json.loads((tmp_path / "run.ipynb").read_text())["cells"])
    assert f"found in {kit_dataset / 'mai-kit-main.zip'}" in text  # the zip, not the checkout
    written = pd.read_csv(work / "submission.csv", dtype={"ID": str})
    validate_submission(written, load_data(data, smoke=True).sample)
    assert (work / "runs" / "smoke").is_dir()  # runs kept where Kaggle saves the output


HER2ST = KIT_ROOT.parent / "shared" / "her2st"
WEIGHTS = KIT_ROOT.parent / "shared" / "weights"


@pytest.mark.first_contact
@pytest.mark.skipif(not (HER2ST.is_dir() and WEIGHTS.is_dir()),
                    reason=f"{HER2ST} or {WEIGHTS} is absent (benchmark data and weights live "
                    "beside the kit in the founders' workspace only)")
def test_quickstart_on_a_real_dataset_offline_writes_the_submission(github_zip, tmp_path,
                                                                     monkeypatch):
    """The real thing, minutes on a CPU: the quickstart alone in /kaggle/working, the kit as
    GitHub's zip, a real DACON-layout dataset (HER2ST) and the lite0/1/2 weight files attached
    as datasets, no SMOKE, no cache: "auto" picks the CPU plan, trains its three runs with the
    real weights, blends them and writes /kaggle/working/submission.csv."""
    import papermill

    root = tmp_path / "platform"
    work, datasets = root / "kaggle" / "working", root / "kaggle" / "input" / "datasets"
    work.mkdir(parents=True)
    (datasets / "someone" / "mai-kit").mkdir(parents=True)
    shutil.copy2(github_zip, datasets / "someone" / "mai-kit" / "mai-kit-main.zip")
    data = datasets / "someone" / "her2st" / "open"
    shutil.copytree(HER2ST, data, ignore=shutil.ignore_patterns("train_sections.csv"))
    (datasets / "someone" / "lite-weights").mkdir()
    for path in WEIGHTS.glob("tf_efficientnet_lite*.safetensors"):
        (datasets / "someone" / "lite-weights" / path.name).symlink_to(path)
    place_quickstart(work, root, monkeypatch)
    start = time.perf_counter()
    papermill.execute_notebook(str(work / "00_quickstart.ipynb"), str(tmp_path / "run.ipynb"),
                               cwd=str(work), kernel_name="python3", progress_bar=False)
    minutes = (time.perf_counter() - start) / 60
    text = json.dumps(json.loads((tmp_path / "run.ipynb").read_text())["cells"])
    assert "cpu_ensemble" in text and "SMOKE quick check" not in text
    written = pd.read_csv(work / "submission.csv", dtype={"ID": str})
    validate_submission(written, load_data(data).sample)
    assert written.drop(columns="ID").std().gt(0).mean() > 0.9  # predictions vary across spots
    runs = sorted(p.name for p in (work / "runs").iterdir() if p.is_dir())
    assert runs == ["cpu_centred_lite0", "cpu_centred_lite1", "cpu_centred_lite2"]
    print(f"\n00_quickstart on HER2ST ({len(written)} test spots), cold cache: {minutes:.1f} min")
    print("\n".join(line for line in text.split("\\n") if "min)" in line or "CV " in line))
