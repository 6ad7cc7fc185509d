"""A newcomer on Kaggle: a folder holding only 00_quickstart.ipynb, GitHub's zip of the kit
attached as one dataset under the 2026 layout (/kaggle/input/datasets/<owner>/<slug>/) and
DACON's data, unpacked with its top folder, as another; Run All writes a valid
/kaggle/working/submission.csv. The platform folders hang from a temporary KIT_PLATFORM_ROOT,
and a first cell takes the developer's installed kit out of the kernel's import system (a
platform runtime has no kit)."""

import json
import shutil

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
    notebook = nbformat.read(KIT_ROOT / "notebooks" / "00_quickstart.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(FORGET_KIT))
    nbformat.write(notebook, work / "00_quickstart.ipynb")
    monkeypatch.setenv("KIT_PLATFORM_ROOT", str(root))
    for name in ("KIT_DATA_DIR", "KIT_CACHE_DIR", "KIT_REPO"):
        monkeypatch.delenv(name, raising=False)
    papermill.execute_notebook(str(work / "00_quickstart.ipynb"), str(tmp_path / "run.ipynb"),
                               parameters={"SMOKE": True, "OVERRIDES": DEMO_MODEL},
                               cwd=str(work), kernel_name="python3", progress_bar=False)
    text = json.dumps(json.loads((tmp_path / "run.ipynb").read_text())["cells"])
    assert f"found in {kit_dataset / 'mai-kit-main.zip'}" in text  # the zip, not the checkout
    written = pd.read_csv(work / "submission.csv", dtype={"ID": str})
    validate_submission(written, load_data(data, smoke=True).sample)
    assert (work / "runs" / "smoke").is_dir()  # runs kept where Kaggle saves the output
