"""Colab and Kaggle data paths: files uploaded to /content are found, a Kaggle dataset of
DACON's open.zip is found unpacked (any top folders) or packed, and the DACON zip unpacks to the
layout the kit reads in one call, or is refused whole when incomplete."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import make_dacon

import utils.places as paths
from utils.places import find_data_dir, missing_files, unpack_dacon_zip


@pytest.fixture
def colab(tmp_path, monkeypatch) -> Path:
    """A fake Colab /content with no Drive, no Kaggle input and an empty kit data folder."""
    content = tmp_path / "platform" / paths.COLAB_CONTENT  # no Kaggle folders beside it
    content.mkdir(parents=True)
    monkeypatch.setenv(paths.PLATFORM_ROOT, str(tmp_path / "platform"))
    monkeypatch.setattr(paths, "kit_root", lambda: tmp_path / "kit")
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    return content


def zip_folder(folder: Path, zip_path: Path, top: str = "", drop: tuple[str, ...] = ()) -> Path:
    """Zip `folder`'s files under the prefix `top`, leaving out the relative paths in `drop`."""
    with zipfile.ZipFile(zip_path, "w") as z:
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder).as_posix()
            if f.is_file() and rel not in drop:
                z.write(f, top + rel)
        z.writestr("__MACOSX/._train.csv", b"junk")  # what a Mac archiver adds
    return zip_path


def test_data_uploaded_to_content_is_found(colab, tmp_path):
    data = make_dacon(colab / "a" / "upload", n_train=3, n_test=2)  # /content/a/upload/dacon/
    with pytest.raises(paths.DataDirError, match="Colab"):
        find_data_dir()  # three levels down is not looked at
    top = data.rename(colab / "a" / "open")  # open.zip unpacked with its top folder
    assert find_data_dir() == top
    moved = top.rename(colab / "my_data")
    assert find_data_dir() == moved
    drive_data = colab / "drive" / "MyDrive" / paths.DRIVE_DATA
    drive_data.parent.mkdir(parents=True)
    drive = make_dacon(tmp_path / "d", n_train=3, n_test=2).rename(drive_data)
    assert find_data_dir() == drive  # the Drive folder comes first, as before


@pytest.mark.parametrize("top", ["", "open/"])
def test_zip_unpacks_to_the_layout_with_or_without_a_top_folder(colab, tmp_path, top):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    archive = zip_folder(data, tmp_path / "open.zip", top)
    dest = unpack_dacon_zip(archive, colab / "data")
    assert dest == colab / "data" and missing_files(dest) == []
    assert sorted(p.name for p in (dest / "train").iterdir()) == sorted(
        p.name for p in (data / "train").iterdir())
    assert not (dest / "__MACOSX").exists() and not (dest / "open").exists()
    assert find_data_dir() == dest
    assert [p.name for p in colab.iterdir()] == ["data"]  # no temporary folder left
    assert unpack_dacon_zip(archive, dest) == dest  # already complete: kept as it is


@pytest.mark.parametrize("drop, named", [
    (("test.csv",), "test.csv"),
    (("train/TRAIN_0001.png",),
     "1 of the 4 images train.csv lists (first: ./train/TRAIN_0001.png)"),
])
def test_incomplete_zip_is_refused_and_nothing_is_unpacked(colab, tmp_path, drop, named):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    archive = zip_folder(data, tmp_path / "open.zip", "open/", drop)
    with pytest.raises(ValueError, match="not a complete DACON archive") as err:
        unpack_dacon_zip(archive, colab / "data")
    assert named in str(err.value) and "Nothing was unpacked" in str(err.value)
    assert list(colab.iterdir()) == []


def test_a_cut_download_and_an_occupied_dest_are_refused(colab, tmp_path):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    archive = zip_folder(data, tmp_path / "open.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable zip"):
        unpack_dacon_zip(cut, colab / "data")
    (colab / "data").mkdir()
    (colab / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete DACON folder"):
        unpack_dacon_zip(archive, colab / "data")
    assert [p.name for p in (colab / "data").iterdir()] == ["notes.txt"]
    unpack_dacon_zip(archive, colab / "data", overwrite=True)
    assert missing_files(colab / "data") == [] and not (colab / "data" / "notes.txt").exists()


# --- Kaggle: a private dataset made from open.zip, unpacked by Kaggle or kept packed ---------

@pytest.fixture
def kaggle(tmp_path, monkeypatch) -> Path:
    """A fake /kaggle/input, no Colab folders, an empty kit data folder."""
    inputs = tmp_path / "platform" / paths.KAGGLE_INPUT  # no Colab folders beside it
    inputs.mkdir(parents=True)
    monkeypatch.setenv(paths.PLATFORM_ROOT, str(tmp_path / "platform"))
    monkeypatch.setattr(paths, "kit_root", lambda: tmp_path / "kit")
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    return inputs


@pytest.mark.parametrize("dataset", ["dacon-mai", "datasets/someone/dacon-mai"])
@pytest.mark.parametrize("inside", ["", "open/", "open/open/"])
def test_a_dataset_kaggle_unpacked_is_found_with_or_without_top_folders(kaggle, tmp_path,
                                                                        dataset, inside):
    data = make_dacon(tmp_path / "src", n_train=3, n_test=2)
    dest = kaggle / dataset / inside
    dest.parent.mkdir(parents=True, exist_ok=True)
    data.rename(dest)
    assert find_data_dir() == dest


def test_a_zip_kaggle_kept_packed_is_unpacked_once_into_the_kit(kaggle, tmp_path, capsys):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    (kaggle / "bundle").mkdir()
    (tmp_path / "kit-code" / "utils").mkdir(parents=True)
    (tmp_path / "kit-code" / "utils" / "bootstrap.py").write_text("")
    zip_folder(tmp_path / "kit-code", kaggle / "bundle" / "mai-kit-bundle.zip")  # no train.csv
    (kaggle / "datasets" / "someone" / "dacon-mai").mkdir(parents=True)  # 2026's layout
    archive = zip_folder(data, kaggle / "datasets" / "someone" / "dacon-mai" / "open.zip", "open/")
    assert paths.dacon_zips() == [archive]
    found = find_data_dir()
    assert found == tmp_path / "kit" / "data" / "dacon" and missing_files(found) == []
    assert f"unpacked the DACON zip {archive}" in capsys.readouterr().out
    assert find_data_dir() == found and capsys.readouterr().out == ""  # the second time: no unpack


def test_open_zip_uploaded_to_colab_content_is_unpacked(colab, tmp_path):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    zip_folder(data, colab / "open.zip")
    assert find_data_dir() == tmp_path / "kit" / "data" / "dacon"


def test_an_incomplete_zip_is_named_in_the_error(kaggle, tmp_path):
    data = make_dacon(tmp_path / "src", n_train=4, n_test=2)
    (kaggle / "d").mkdir()
    zip_folder(data, kaggle / "d" / "open.zip", drop=("test.csv",))
    with pytest.raises(paths.DataDirError, match=r"open\.zip \(a zip\): .*lacks: test\.csv"):
        find_data_dir()
