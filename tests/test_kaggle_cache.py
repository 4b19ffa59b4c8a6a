"""The parse cache is honest: an edit that keeps a file's size, inode and mtime, or a ``cp -p``
of other content over it, is parsed afresh; a store that fails leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from fkd_core import kaggle, parse_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, with a short settle window so tests need not wait 2 s."""
    monkeypatch.setenv("FKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(parse_cache, "SETTLE_NS", 200_000_000)
    return tmp_path / "cache"


def _write(folder, first_pixel: int):
    """A two-face training.csv whose first pixel is ``first_pixel``; other bytes fixed."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 96, 96), dtype=np.uint8)
    images[0, 0, 0] = first_pixel
    keypoints = np.round(rng.uniform(10, 85, (2, 30)), 2)
    folder.mkdir(parents=True, exist_ok=True)
    kaggle.write_training_csv(folder / "training.csv", images, keypoints)
    return folder / "training.csv"


def _first_pixel(folder) -> int:
    return int(kaggle.read_training(kaggle.locate(folder)["training.csv"])["images"][0, 0, 0])


def _first_pixel_offset(path) -> int:
    data = path.read_bytes()
    header_end = data.index(b"\n")
    return data.rindex(b",", header_end, data.index(b"\n", header_end + 1)) + 1


def _settle():
    time.sleep(parse_cache.SETTLE_NS / 1e9 + 0.1)


def _identity(path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_ino, st.st_mtime_ns


def test_in_place_edit_keeping_size_inode_and_mtime_is_parsed_afresh(tmp_path, cache):
    path = _write(tmp_path / "data", 100)
    _settle()
    assert _first_pixel(path.parent) == 100
    assert parse_cache.indexed_digest(path) is not None  # the stat shortcut is in use
    before, st = _identity(path), os.stat(path)
    with open(path, "r+b") as f:
        f.seek(_first_pixel_offset(path))
        assert f.read(4) == b"100 "
        f.seek(_first_pixel_offset(path))
        f.write(b"200")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _identity(path) == before
    assert _first_pixel(path.parent) == 200


def test_copy_preserving_mtime_of_same_size_file_is_parsed_afresh(tmp_path, cache):
    path = _write(tmp_path / "data", 100)
    other = _write(tmp_path / "other", 200)
    assert other.stat().st_size == path.stat().st_size
    _settle()
    assert _first_pixel(path.parent) == 100
    assert parse_cache.indexed_digest(path) is not None
    before, st = _identity(path), os.stat(path)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(other, path)  # cp -p: same size, same inode, same mtime, other content
    assert _identity(path) == before
    assert _first_pixel(path.parent) == 200


def test_edit_right_after_a_load_is_parsed_afresh(tmp_path, cache):
    """Within the settle window a file's stat is not trusted: the next change may land in the
    same time-stamp tick and leave even its ctime unchanged."""
    path = _write(tmp_path / "data", 100)
    assert _first_pixel(path.parent) == 100
    assert parse_cache.indexed_digest(path) is None
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(_first_pixel_offset(path))
        f.write(b"201")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _first_pixel(path.parent) == 201


def test_failed_store_leaves_no_temporary_files(tmp_path, cache):
    """An entry another process left in the way (here: a folder ``os.replace`` cannot replace)
    makes the store fail; the load still succeeds and nothing is left in the cache."""
    path = _write(tmp_path / "data", 100)
    member = kaggle.locate(path.parent)["training.csv"]
    entry = parse_cache.entry_path("training", member.content_key())
    entry.mkdir(parents=True)
    (entry / "written-by-someone-else").write_text("")
    arrays = kaggle.read_training(member)
    assert arrays["images"][0, 0, 0] == 100
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
    assert [p.name for p in entry.iterdir()] == ["written-by-someone-else"]


def test_entry_is_used_only_when_it_holds_exactly_the_expected_arrays(tmp_path, cache):
    path = _write(tmp_path / "data", 100)
    member = kaggle.locate(path.parent)["training.csv"]
    kaggle.read_training(member)
    entry = parse_cache.entry_path("training", member.content_key())
    (entry / "arrays.json").write_text('["images"]')  # a damaged or foreign entry
    assert kaggle.read_training(member)["keypoints"].shape == (2, 30)
