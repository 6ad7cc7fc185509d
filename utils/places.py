"""Where things are: the kit's root folder and the competition data (Kaggle, Colab, local).

Data root, first match wins:
1. the notebook's `DATA_DIR` parameter;
2. the environment variable `KIT_DATA_DIR`;
3. Kaggle: any folder under `/kaggle/input` (up to five levels deep) holding `train.csv` (a
   dataset made from DACON's open.zip, which Kaggle unpacks: `/kaggle/input/<slug>/…` or
   `/kaggle/input/datasets/<owner>/<slug>/…`, with or without the zip's top folder);
4. Colab: the Google Drive folder `MyDrive/dacon_mai` or a folder right under it (mounted at
   `/content/drive`);
5. Colab: `/content` or a folder up to two levels under it holding `train.csv` (files uploaded
   there, or open.zip unpacked there with its top folder);
6. `data/` in the kit's root folder or a folder right under it, then `data/dacon/` (where a
   DACON zip is unpacked).
When none is complete, a DACON zip (any .zip holding train.csv) under /kaggle/input (Kaggle
kept it packed), in /content or in the Drive folder is unpacked to `data/dacon/` once, and used.
The platform folders are read through `platform_path`: `KIT_PLATFORM_ROOT` (default `/`) is
the folder they hang from, so a test can lay out /kaggle or /content in a temporary folder.
An explicit DATA_DIR or KIT_DATA_DIR is never second-guessed: if it is incomplete, that is the
error. Relative paths are relative to the kit's root folder, wherever the notebook runs from.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

REQUIRED = ("train.csv", "test.csv", "sample_submission.csv", "train/", "test/")
ENV_VAR = "KIT_DATA_DIR"
PLATFORM_ROOT = "KIT_PLATFORM_ROOT"  # the folder /kaggle and /content hang from (tests: a tmp one)
KAGGLE_INPUT = "kaggle/input"  # attached datasets (read-only)
KAGGLE_WORKING = "kaggle/working"  # Kaggle's writable folder (the Output panel)
COLAB_CONTENT = "content"  # Colab's working folder (files uploaded in the browser land here)
COLAB_DRIVE = "content/drive/MyDrive"  # Google Drive, once mounted
DRIVE_DATA = "dacon_mai"  # the data's folder in My Drive
KIT_DATA_FOLDERS = ("data/demo", "data/dacon")  # the kit's own: `make demo`, an unpacked zip
KAGGLE_DEPTH = 5  # folders under /kaggle/input: datasets/<owner>/<slug>/<zip's top folder>/


class DataDirError(FileNotFoundError):
    """No complete data folder was found; the message lists every place looked at."""


def kit_root() -> Path:
    """The folder that holds the `utils` package (the cloned kit)."""
    return Path(__file__).resolve().parent.parent


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path; relative ones are taken from the kit's root folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else kit_root() / path


def platform_path(place: str) -> Path:
    """A platform folder (`KAGGLE_INPUT`, `COLAB_CONTENT`, …) under `$KIT_PLATFORM_ROOT` (`/`)."""
    return Path(os.environ.get(PLATFORM_ROOT) or "/") / place


def folders_with(base: Path, name: str, depth: int) -> list[Path]:
    """Folders at most `depth` levels under `base` (itself included) holding a file `name`."""
    patterns = ["/".join(["*"] * level + [name]) for level in range(depth + 1)]
    return sorted({p.parent for pattern in patterns for p in base.glob(pattern)
                   if p.is_file()}) if base.is_dir() else []


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
    inputs, drive = platform_path(KAGGLE_INPUT), platform_path(COLAB_DRIVE) / DRIVE_DATA
    data, own = kit_root() / "data", {kit_root() / d for d in KIT_DATA_FOLDERS}
    kaggle = [p for p in folders_with(inputs, "train.csv", KAGGLE_DEPTH) if p != inputs]
    kit = [p for p in folders_with(data, "train.csv", 1) if p not in own]
    return [*[("Kaggle input", p) for p in kaggle or [inputs]],
            *[("Colab Google Drive", p) for p in folders_with(drive, "train.csv", 1) or [drive]],
            *[("Colab upload", p) for p in colab_upload_dirs()],
            *[("kit data folder", p) for p in kit or [data]],
            *([("unpacked DACON zip", unpacked_dir())] if unpacked_dir().is_dir() else [])]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The first complete data folder; otherwise one error listing each place and its gaps."""
    looked = []
    for source, folder in candidate_dirs(data_dir):
        missing = missing_files(folder) if folder.is_dir() else ["the folder itself"]
        if not missing:
            return folder
        looked.append(f"  - {folder} ({source}): missing {', '.join(missing)}")
    if data_dir in (None, "") and not os.environ.get(ENV_VAR):
        for archive in dacon_zips():
            try:
                return unpack_found_zip(archive)
            except (ValueError, FileExistsError) as err:
                looked.append(f"  - {archive} (a zip): {err}")
    raise DataDirError(
        "No complete DACON data folder found. It needs " + ", ".join(REQUIRED) + ".\n"
        "Looked in:\n" + "\n".join(looked) + "\n"
        "Put the unzipped competition files (or DACON's open.zip) in data/ (see data/README.md) "
        f"or where the README says for Colab and Kaggle, set DATA_DIR in the notebook's parameters "
        f"cell, or set ${ENV_VAR}. For a trial run: make demo.")


# --- Colab: data uploaded to /content, the DACON zip --------------------------------------------

ZIP_JUNK = ("__MACOSX/", ".DS_Store")  # entries archivers add that are not data


def colab_upload_dirs() -> list[Path]:
    """Folders under Colab's /content that hold a train.csv: /content itself or up to two levels
    down (an upload, or open.zip unpacked with its top folder); neither Drive (searched on its
    own) nor the kit's copy there (its demo set is no upload)."""
    skip = (platform_path(COLAB_DRIVE).parent, kit_root())
    return [p for p in folders_with(platform_path(COLAB_CONTENT), "train.csv", 2)
            if not any(s in (p, *p.parents) for s in skip)]


def unpacked_dir() -> Path:
    """Where a DACON zip found by `find_data_dir` is unpacked: data/dacon in the kit."""
    return kit_root() / "data" / "dacon"


def dacon_zips() -> list[Path]:
    """Zips holding a train.csv where platforms keep uploads: /kaggle/input (a dataset Kaggle
    kept packed), Colab's /content and the Drive folder."""
    inputs = platform_path(KAGGLE_INPUT)
    places = [*(inputs.glob("/".join(["*"] * level + ["*.zip"]))
                for level in range(1, KAGGLE_DEPTH + 1)),
              platform_path(COLAB_CONTENT).glob("*.zip"),
              (platform_path(COLAB_DRIVE) / DRIVE_DATA).glob("*.zip")]
    found = []
    for path in sorted({p for place in places for p in place if p.is_file()}):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            continue
        if any(n.rsplit("/", 1)[-1] == "train.csv" and not n.startswith(ZIP_JUNK)
               for n in names):
            found.append(path)
    return found


def unpack_found_zip(archive: Path) -> Path:
    """Unpack a DACON zip that `find_data_dir` found to `unpacked_dir()`, saying so."""
    start = time.perf_counter()
    dest = unpack_dacon_zip(archive, unpacked_dir())
    print(f"unpacked the DACON zip {archive} to {dest} ({time.perf_counter() - start:.0f} s, "
          "once: later runs read that folder)", flush=True)
    return dest


def dacon_zip_root(names: list[str]) -> str:
    """The folder inside a DACON zip that holds train.csv ("" at the top, "open/" if the archive
    wraps everything in one folder)."""
    hits = sorted((n for n in names if n.rsplit("/", 1)[-1] == "train.csv"
                   and not n.startswith(ZIP_JUNK)), key=lambda n: n.count("/"))
    return hits[0][: -len("train.csv")] if hits else ""


def zip_missing(names: list[str], root: str, read: Callable[[str], bytes]) -> list[str]:
    """What a DACON zip lacks under `root`: required files/folders, then images its CSVs list."""
    have = set(names)
    folders = {n[len(root):].split("/", 1)[0] + "/" for n in names
               if n.startswith(root) and "/" in n[len(root):]}
    missing = [r for r in REQUIRED
               if (r not in folders if r.endswith("/") else root + r not in have)]
    for table in ("train.csv", "test.csv"):
        if table in missing:
            continue
        rows = csv.DictReader(io.StringIO(read(root + table).decode("utf-8-sig")))
        paths = [row["path"] for row in rows if row.get("path")]
        lost = [p for p in paths if root + os.path.normpath(p) not in have]
        if lost:
            missing.append(f"{len(lost)} of the {len(paths)} images {table} lists "
                           f"(first: {lost[0]})")
    return missing


def unpack_dacon_zip(zip_path: str | os.PathLike, dest: str | os.PathLike = "/content/data",
                     overwrite: bool = False) -> Path:
    """Unpack the DACON zip so that `dest` holds train.csv, test.csv, sample_submission.csv,
    train/ and test/ (one folder wrapping them inside the zip is dropped). An incomplete archive
    is refused before anything is written, naming what it lacks; unpacking goes to a temporary
    folder beside `dest`, renamed into place when complete. A `dest` that already holds a
    complete DACON folder is kept as it is (`overwrite=True` replaces it). Returns `dest`."""
    dest = resolve(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        if not missing_files(dest):
            return dest
        raise FileExistsError(f"{dest} exists and is not a complete DACON folder; choose another "
                              "dest or pass overwrite=True")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{zip_path} is not a readable zip ({err}); was the download cut "
                         "short?") from None
    with archive:
        names = [n for n in archive.namelist() if not n.startswith(ZIP_JUNK)]
        root = dacon_zip_root(names)
        missing = zip_missing(names, root, archive.read)
        if missing:
            raise ValueError(f"{zip_path} is not a complete DACON archive; it lacks: "
                             f"{'; '.join(missing)}. Nothing was unpacked.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-unpack-", dir=dest.parent))
        try:
            archive.extractall(tmp, members=[n for n in names if n.startswith(root)])
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp / root if root else tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- where runs and the submission live on each platform --------------------------------------

DRIVE_FOLDER = "mai-kit"  # the kit's folder in My Drive (runs/, a copy of the submission)


class VolatileRunsWarning(UserWarning):
    """Runs go to a folder the platform wipes (Colab's /content without Drive)."""


def detect_platform() -> str:
    """"kaggle", "colab" or "local", from the folders each platform has."""
    if platform_path(KAGGLE_WORKING).is_dir():
        return "kaggle"
    return "colab" if platform_path(COLAB_CONTENT).is_dir() else "local"


def default_run_root() -> Path:
    """Where run folders outlive the notebook: /kaggle/working/runs on Kaggle (kept with a saved
    version), My Drive/mai-kit/runs on Colab with Drive mounted, else /content/runs (with a
    warning: a runtime reset loses it), the kit's runs/ locally."""
    platform, drive = detect_platform(), platform_path(COLAB_DRIVE)
    if platform == "kaggle":
        return platform_path(KAGGLE_WORKING) / "runs"
    if platform == "local":
        return kit_root() / "runs"
    if drive.is_dir():
        return drive / DRIVE_FOLDER / "runs"
    content = platform_path(COLAB_CONTENT)
    warnings.warn(f"runs go to {content / 'runs'}, which a runtime reset deletes: mount Drive "
                  "(Files panel) to keep them in My Drive/mai-kit/runs",
                  VolatileRunsWarning, stacklevel=2)
    return content / "runs"


def default_submission() -> Path:
    """Where the platform shows outputs: /kaggle/working/submission.csv (the Output panel),
    /content/submission.csv on Colab (Files panel), the kit's submissions/ locally."""
    folder = {"kaggle": KAGGLE_WORKING, "colab": COLAB_CONTENT}.get(detect_platform())
    return (platform_path(folder) if folder else kit_root() / "submissions") / "submission.csv"


def submission_copies(path: str | os.PathLike) -> list[Path]:
    """Where a copy of the submission is kept beside `path`: My Drive/mai-kit/ when Drive is
    mounted on Colab (it survives the runtime); nowhere else."""
    drive = platform_path(COLAB_DRIVE)
    if detect_platform() == "colab" and drive.is_dir():
        return [drive / DRIVE_FOLDER / Path(path).name]
    return []
