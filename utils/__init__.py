"""H&E → gene-expression kit: data, metric, CV, models and submission helpers.

Importing `utils` is cheap and has no side effects: submodules load on first use
(`utils.metric`, `utils.data`, …), and heavy libraries (torch, timm, umap, …) only inside the
functions and modules that need them.
"""

import importlib
import os
import pkgutil

# albumentations asks the package index for a newer version at import unless this is set:
# no notebook should make a network call it did not ask for.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__))


def __getattr__(name: str):
    """Import a submodule on first attribute access (`utils.data.load_data`)."""
    if name in __all__:
        return importlib.import_module(f"utils.{name}")
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
