"""Figures: a new figure with constrained layout, saved atomically as PNG.

matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.files import write_with
from utils.places import resolve

# --- figures ----------------------------------------------------------------------------------

def figure(width: float = 8, height: float = 3.5, nrows: int = 1, ncols: int = 1, **kwargs):
    """A new figure and its axes (matplotlib imported only when plotting)."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)


def save_figure(fig, folder: str | os.PathLike, name: str) -> Path:
    """Save a figure as `<folder>/<name>.png` atomically (relative folders from the kit root)."""
    return write_with(resolve(folder) / f"{name}.png",
                      lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
