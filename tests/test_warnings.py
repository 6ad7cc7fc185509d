"""Issue 25: data warnings show every time, in a Jupyter kernel under papermill too: the image
conversion warning is stored with the cache and repeated by every cell, and every later run,
that reads it (Python's default filters show a warning once per line until the filters
change, so a loop over one line used to print it once)."""

from __future__ import annotations

import json

import numpy as np
from conftest import SIZE, make_dacon, write_png


def _notebook(path, root, cache) -> None:
    load = f"images = load_images(data, 'train', cache_dir={str(cache)!r})"
    cells = [f"from utils.data import load_data, load_images\ndata = load_data({str(root)!r})",
             load, f"for _ in range(2):\n    {load}"]
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}",
                     "metadata": {}, "outputs": [], "source": src}
                    for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _stderr(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in cell["outputs"]
                   if o.get("name") == "stderr")


def test_conversion_warning_shows_in_every_cell_and_run_under_papermill(tmp_path):
    from utils.dev.pipeline import execute_notebook

    root = make_dacon(tmp_path)
    write_png(root / "train" / "TRAIN_0002.png", np.full((*SIZE, 4), 128))  # RGBA
    write_png(root / "train" / "TRAIN_0003.png", np.full(SIZE, 9))  # greyscale
    nb = tmp_path / "warn.ipynb"
    _notebook(nb, root, tmp_path / "cache")
    for run in ("first", "second"):  # the second run reads the cache the first one built
        out = json.loads(execute_notebook(nb, {}, tmp_path / f"{run}.ipynb").read_text())
        for cell, times in zip(out["cells"][1:], (1, 2)):
            text = _stderr(cell)
            assert text.count("ImageConversionWarning") == times, (run, text)
            assert "2 of 12 patches" in text and "1 greyscale" in text and "alpha" in text
