"""utils.places: where the data is found, in which order, and what the error says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import make_dacon

import utils.places as paths
from utils.files import run_dir
from utils.places import REQUIRED, DataDirError, find_data_dir


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """Kaggle, Colab and kit folders under tmp_path (none holding data yet); no env var."""
    root = tmp_path / "platform"  # stands for / : root/kaggle/input, root/content/drive/...
    spots = {"kaggle": root / paths.KAGGLE_INPUT, "kit": tmp_path / "kit",
             "colab": root / paths.COLAB_DRIVE / paths.DRIVE_DATA}
    spots["kit"].mkdir()
    monkeypatch.setenv(paths.PLATFORM_ROOT, str(root))
    monkeypatch.setattr(paths, "kit_root", lambda: spots["kit"])
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return spots


def dacon_at(folder: Path) -> Path:
    """A complete DACON folder exactly at `folder`."""
    built = make_dacon(folder.parent / f"build-{folder.name}", n_train=2, n_test=1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built, folder)
    return folder


def all_places(tmp_path: Path, places: dict[str, Path], monkeypatch) -> dict[str, Path]:
    """Data in every place: explicit, env var, Kaggle (2 levels deep), Colab and the kit."""
    found = {"explicit": dacon_at(tmp_path / "explicit"), "env": dacon_at(tmp_path / "env"),
             "kaggle": dacon_at(places["kaggle"] / "comp" / "files"),
             "colab": dacon_at(places["colab"]), "kit": dacon_at(places["kit"] / "data")}
    monkeypatch.setenv(paths.ENV_VAR, str(found["env"]))
    return found


def missing_listed(message: str, folder: Path) -> list[str]:
    """The 'missing …' list the error gives for `folder`."""
    line = next(ln for ln in message.splitlines() if f"- {folder} (" in ln)
    return re.search(r"missing (.*)$", line).group(1).split(", ")


def test_explicit_beats_everything(tmp_path, places, monkeypatch):
    found = all_places(tmp_path, places, monkeypatch)
    assert find_data_dir(found["explicit"]) == found["explicit"]
    assert find_data_dir(str(found["explicit"])) == found["explicit"]


def test_env_beats_kaggle_colab_kit(tmp_path, places, monkeypatch):
    found = all_places(tmp_path, places, monkeypatch)
    assert find_data_dir() == found["env"]
    assert find_data_dir("") == found["env"]  # an empty DATA_DIR parameter means 'not set'


def test_kaggle_beats_colab_and_kit(tmp_path, places, monkeypatch):
    found = all_places(tmp_path, places, monkeypatch)
    monkeypatch.delenv(paths.ENV_VAR)
    assert find_data_dir() == found["kaggle"]


def test_kaggle_one_level_deep(places):
    folder = dacon_at(places["kaggle"] / "comp")
    dacon_at(places["colab"])
    assert find_data_dir() == folder


def test_incomplete_kaggle_folder_falls_through_to_colab(places):
    (dacon_at(places["kaggle"] / "comp") / "test.csv").unlink()
    colab = dacon_at(places["colab"])
    assert find_data_dir() == colab


def test_colab_beats_kit(places):
    dacon_at(places["kit"] / "data")
    colab = dacon_at(places["colab"])
    assert find_data_dir() == colab


def test_kit_data_folder_last(places):
    kit = dacon_at(places["kit"] / "data")
    assert find_data_dir() == kit


def test_a_top_folder_of_open_zip_is_allowed_in_the_kit_and_on_drive(places):
    dacon_at(places["kit"] / "data" / "demo")  # `make demo`'s set is never taken for the data
    with pytest.raises(DataDirError):
        find_data_dir()
    kit = dacon_at(places["kit"] / "data" / "open")
    assert find_data_dir() == kit
    drive = dacon_at(places["colab"] / "open")
    assert find_data_dir() == drive


@pytest.mark.parametrize("layout", ["comp", "comp/open", "datasets/owner/slug",
                                    "datasets/owner/slug/open", "datasets/owner/slug/open/open"])
def test_both_kaggle_layouts_with_or_without_the_zips_top_folder(places, layout):
    folder = dacon_at(places["kaggle"] / layout)
    assert find_data_dir() == folder


def test_incomplete_explicit_folder_errors_without_fallback(tmp_path, places, monkeypatch):
    found = all_places(tmp_path, places, monkeypatch)
    (found["explicit"] / "test.csv").unlink()
    shutil.rmtree(found["explicit"] / "train")
    with pytest.raises(DataDirError) as err:
        find_data_dir(found["explicit"])
    message = str(err.value)
    assert missing_listed(message, found["explicit"]) == ["test.csv", "train/"]
    assert "DATA_DIR" in message
    for other in ("env", "kaggle", "colab", "kit"):
        assert str(found[other]) not in message  # never looked further


def test_incomplete_env_folder_errors_without_fallback(tmp_path, places, monkeypatch):
    found = all_places(tmp_path, places, monkeypatch)
    (found["env"] / "sample_submission.csv").unlink()
    with pytest.raises(DataDirError) as err:
        find_data_dir()
    assert missing_listed(str(err.value), found["env"]) == ["sample_submission.csv"]
    assert paths.ENV_VAR in str(err.value) and str(found["kit"]) not in str(err.value)


def test_missing_explicit_folder_errors(tmp_path, places):
    with pytest.raises(DataDirError) as err:
        find_data_dir(tmp_path / "nowhere")
    assert missing_listed(str(err.value), tmp_path / "nowhere") == ["the folder itself"]


def test_nothing_found_lists_every_place(places):
    places["colab"].mkdir(parents=True)
    (places["colab"] / "train.csv").write_text("ID,path\n")
    with pytest.raises(DataDirError) as err:
        find_data_dir()
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert missing_listed(message, places["kaggle"]) == ["the folder itself"]
    assert missing_listed(message, places["colab"]) == [n for n in REQUIRED if n != "train.csv"]
    assert missing_listed(message, places["kit"] / "data") == ["the folder itself"]
    assert message.count("\n  - ") == 3


def test_relative_paths_resolve_against_kit_root(tmp_path, places, monkeypatch):
    folder = dacon_at(places["kit"] / "mydata")
    dacon_at(tmp_path / "mydata")  # same name under the working folder: must not be used
    assert find_data_dir("mydata") == folder
    monkeypatch.setenv(paths.ENV_VAR, "mydata")
    assert find_data_dir() == folder
    assert paths.resolve("runs/a") == places["kit"] / "runs" / "a"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"


def test_run_dir_creates_folder_under_kit_root(places):
    folder = run_dir("runs/first")
    assert folder == places["kit"] / "runs" / "first" and folder.is_dir()
    assert run_dir("runs/first") == folder  # idempotent


def test_kit_root_holds_utils():
    assert (paths.kit_root() / "utils" / "places.py").is_file()
