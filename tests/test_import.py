"""`import utils` stays fast and light: no heavy library is imported until used."""

import subprocess
import sys

HEAVY = ("torch", "timm", "umap", "pytorch_grad_cam", "lpips", "albumentations", "matplotlib",
         "sklearn", "papermill", "cv2", "numba")


def test_import_utils_loads_no_heavy_library():
    code = ("import sys, utils, utils.metric, utils.cv, utils.data, utils.submit, utils.runs, "
            "utils.config, utils.paths, utils.io, utils.plots, utils.recipes, utils.pipeline; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"importing utils pulled in heavy libraries: {out}"


def test_submodules_load_lazily():
    code = "import sys, utils; a = 'utils.metric' in sys.modules; utils.metric; print(a)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
