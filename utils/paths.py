"""Where the data and the runs live, on Kaggle, Colab or a local clone.

Data root, first match wins:
1. the notebook's `DATA_DIR` parameter;
2. the environment variable `KIT_DATA_DIR`;
3. Kaggle: any folder under `/kaggle/input` (two levels deep) holding `train.csv`;
4. Colab: the Google Drive folder `MyDrive/dacon_mai` (mounted at `/content/drive`);
5. `data/` in the kit's root folder.
An explicit DATA_DIR or KIT_DATA_DIR is never second-guessed: if it is incomplete, that is the
error. Relative paths are relative to the kit's root folder, wherever the notebook runs from.
"""

from __future__ import annotations

import os
from pathlib import Path

REQUIRED = ("train.csv", "test.csv", "sample_submission.csv", "train/", "test/")
ENV_VAR = "KIT_DATA_DIR"
KAGGLE_INPUT = Path("/kaggle/input")
COLAB_DRIVE = Path("/content/drive/MyDrive/dacon_mai")


class DataDirError(FileNotFoundError):
    """No complete data folder was found; the message lists every place looked at."""


def kit_root() -> Path:
    """The folder that holds the `utils` package (the cloned kit)."""
    return Path(__file__).resolve().parent.parent


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path; relative ones are taken from the kit's root folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else kit_root() / path


def missing_files(folder: Path) -> list[str]:
    """The required DACON files and folders that `folder` lacks."""
    def present(name: str) -> bool:
        return (folder / name[:-1]).is_dir() if name.endswith("/") else (folder / name).is_file()
    return [name for name in REQUIRED if not present(name)]


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places the data may be, in priority order, each with where it came from."""
    if data_dir not in (None, ""):
        return [("DATA_DIR parameter", resolve(data_dir))]
    if os.environ.get(ENV_VAR):
        return [(f"${ENV_VAR}", resolve(os.environ[ENV_VAR]))]
    found = sorted({p.parent for pattern in ("*/train.csv", "*/*/train.csv")
                    for p in KAGGLE_INPUT.glob(pattern)}) if KAGGLE_INPUT.is_dir() else []
    kaggle = [("Kaggle input", p) for p in found] or [("Kaggle input", KAGGLE_INPUT)]
    return [*kaggle, ("Colab Google Drive", COLAB_DRIVE), ("kit data folder", kit_root() / "data")]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The first complete data folder; otherwise one error listing each place and its gaps."""
    looked = []
    for source, folder in candidate_dirs(data_dir):
        missing = missing_files(folder) if folder.is_dir() else ["the folder itself"]
        if not missing:
            return folder
        looked.append(f"  - {folder} ({source}): missing {', '.join(missing)}")
    raise DataDirError(
        "No complete DACON data folder found. It needs " + ", ".join(REQUIRED) + ".\n"
        "Looked in:\n" + "\n".join(looked) + "\n"
        "Put the unzipped competition files in data/ (see data/README.md), set DATA_DIR in the "
        f"notebook's parameters cell, or set ${ENV_VAR}. For a trial run: make demo.")


def run_dir(path: str | os.PathLike) -> Path:
    """A run folder (created if needed), relative paths taken from the kit's root."""
    folder = resolve(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
