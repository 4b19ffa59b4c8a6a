"""Kaggle file I/O: every layout a user downloads, strict errors, the parse cache, the writers."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fkd_core import dataset, kaggle
from fkd_core.cli import app
from fkd_core.keypoints import ALWAYS_PRESENT, COLUMN_NAMES, column_indices

runner = CliRunner()


def make_set(folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """A small valid Kaggle set written with the project's writers."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train, 96, 96), dtype=np.uint8)
    kp = rng.uniform(10, 85, (n_train, 30)).astype(np.float32)
    partial = np.ones(30, bool)
    partial[column_indices(ALWAYS_PRESENT)] = False
    kp[1::2][:, partial] = np.nan  # every other row carries only the four keypoints
    test_images = rng.integers(0, 256, (n_test, 96, 96), dtype=np.uint8)
    test_ids = np.arange(1, n_test + 1)
    lookup = pd.DataFrame(
        [(i, c) for i in test_ids for c in (COLUMN_NAMES if i == 1 else COLUMN_NAMES[:2])],
        columns=["ImageId", "FeatureName"],
    )
    lookup.insert(0, "RowId", np.arange(1, len(lookup) + 1))
    folder.mkdir(parents=True, exist_ok=True)
    kaggle.write_training_csv(folder / "training.csv", images, kp)
    kaggle.write_test_csv(folder / "test.csv", test_ids, test_images)
    kaggle.write_lookup_csv(folder / "IdLookupTable.csv", lookup)
    zeros = np.zeros(len(lookup))
    kaggle.write_submission_csv(folder / "SampleSubmission.csv", lookup.RowId, zeros)
    return {"images": images, "keypoints": kp, "test_images": test_images, "lookup": lookup}


def summary(path) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "summary", str(path)])
    return result.exit_code, result.output


def test_roundtrip_values_exact(tmp_path):
    truth = make_set(tmp_path)
    data = dataset.load(tmp_path, use_cache=False)
    np.testing.assert_array_equal(data.train.images, truth["images"])
    np.testing.assert_allclose(data.train.keypoints, truth["keypoints"], atol=1e-5)
    assert np.isnan(data.train.keypoints[1]).sum() == 22
    np.testing.assert_array_equal(data.test.images, truth["test_images"])
    assert data.lookup.FeatureName.tolist() == truth["lookup"].FeatureName.tolist()
    assert len(data.sample_submission) == len(truth["lookup"])


def test_summary_counts(tmp_path):
    make_set(tmp_path)
    code, text = summary(tmp_path)
    assert code == 0, text
    assert "training rows        6" in text
    assert "complete rows        3" in text
    assert "test images          4" in text
    assert "lookup rows          36" in text


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_three_layouts_give_identical_data(tmp_path, demo_dir):
    loose = dataset.load(demo_dir)
    per_file = tmp_path / "per-file"
    per_file.mkdir()
    _zip(per_file / "training.zip", {"training.csv": (demo_dir / "training.csv").read_bytes()})
    _zip(per_file / "test.zip", {"test.csv": (demo_dir / "test.csv").read_bytes()})
    for small in ("IdLookupTable.csv", "SampleSubmission.csv"):
        shutil.copy(demo_dir / small, per_file / small)
    archive = tmp_path / "archive" / "facial-keypoints-detection.zip"
    archive.parent.mkdir()
    _zip(archive, {
        "training.zip": (per_file / "training.zip").read_bytes(),
        "test.zip": (per_file / "test.zip").read_bytes(),
        "IdLookupTable.csv": (demo_dir / "IdLookupTable.csv").read_bytes(),
        "SampleSubmission.csv": (demo_dir / "SampleSubmission.csv").read_bytes(),
    })
    for where in (per_file, archive, archive.parent):
        other = dataset.load(where)
        np.testing.assert_array_equal(other.train.images, loose.train.images)
        np.testing.assert_array_equal(other.train.keypoints, loose.train.keypoints)
        np.testing.assert_array_equal(other.test.image_ids, loose.test.image_ids)
        pd.testing.assert_frame_equal(other.lookup, loose.lookup)
        code, text = summary(where)
        assert code == 0, text
        assert f"training rows        {len(loose.train)}" in text
        assert f"test images          {len(loose.test)}" in text
        assert f"lookup rows          {len(loose.lookup)}" in text


def test_faces15_summary(faces15):
    code, text = summary(faces15)
    assert code == 0, text
    assert "training rows        3372" in text
    assert "complete rows        957" in text
    assert "test images          840" in text
    assert "lookup rows          12682" in text


# ------------------------------------------------------------------------------------------
# Bad input: each case names the file, the line (and data row) and the problem.


def _rewrite_line(path: Path, line: int, edit) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_bytes(b"\n".join(lines))


def _replace_pixel(position: int, token: bytes):
    def edit(line: bytes) -> bytes:
        head, image = line.rsplit(b",", 1)
        pixels = image.split(b" ")
        pixels[position - 1] = token
        return head + b"," + b" ".join(pixels)

    return edit


BAD_INPUTS = {
    "missing column": (
        "training.csv",
        lambda p: _rewrite_line(p, 1, lambda h: h.replace(b"nose_tip_x,", b"")),
        1, "missing column 'nose_tip_x'",
    ),
    "misspelled column": (
        "training.csv",
        lambda p: _rewrite_line(
            p, 1, lambda h: h.replace(b"left_eye_center_x", b"left_eye_centre_x")
        ),
        1, "missing column 'left_eye_center_x' (found 'left_eye_centre_x' — misspelled?)",
    ),
    "too few pixels": (
        "training.csv",
        lambda p: _rewrite_line(p, 4, lambda line: line.rsplit(b" ", 1)[0]),
        4, "Image has 9215 values, expected 9216",
    ),
    "too many pixels": (
        "training.csv",
        lambda p: _rewrite_line(p, 3, lambda line: line + b" 7"),
        3, "Image has 9217 values, expected 9216",
    ),
    "pixel above 255": (
        "training.csv",
        lambda p: _rewrite_line(p, 5, _replace_pixel(17, b"256")),
        5, "Image value 256 at position 17 is outside 0–255",
    ),
    "negative pixel": (
        "training.csv",
        lambda p: _rewrite_line(p, 2, _replace_pixel(3, b"-4")),
        2, "Image holds '-4' at position 3, expected integers 0–255",
    ),
    "non-integer pixel": (
        "training.csv",
        lambda p: _rewrite_line(p, 6, _replace_pixel(9000, b"1.5")),
        6, "Image holds '1.5' at position 9000",
    ),
    "non-numeric coordinate": (
        "training.csv",
        lambda p: _rewrite_line(p, 3, lambda line: b"abc" + line[line.index(b","):]),
        3, "column left_eye_center_x: 'abc' is not a number",
    ),
    "stray quote in a coordinate": (
        "training.csv",
        lambda p: _rewrite_line(p, 3, lambda line: b'"' + line),
        3, "column left_eye_center_x: '\"",
    ),
    "carriage return inside a coordinate": (
        "training.csv",
        lambda p: _rewrite_line(p, 4, lambda line: line[:3] + b"\r" + line[3:]),
        4, "is not a number",
    ),
    "duplicate ImageId": (
        "test.csv",
        lambda p: _rewrite_line(p, 4, lambda line: b"2" + line[line.index(b","):]),
        4, "ImageId 2 already appears on line 3",
    ),
    "lookup unknown image": (
        "IdLookupTable.csv",
        lambda p: _rewrite_line(p, 7, lambda line: line.replace(b",1,", b",99,", 1)),
        7, "ImageId 99 is not an ImageId of test.csv",
    ),
    "lookup unknown feature": (
        "IdLookupTable.csv",
        lambda p: _rewrite_line(
            p, 3, lambda line: line.replace(b"left_eye_center_y", b"left_eye_y")
        ),
        3, "FeatureName 'left_eye_y' is not a keypoint column",
    ),
    "truncated file": (
        "training.csv",
        lambda p: p.write_bytes(p.read_bytes()[:-5000]),
        7, "Image has",
    ),
    "lookup extra field": (
        "IdLookupTable.csv",
        lambda p: _rewrite_line(p, 5, lambda line: line + b",7"),
        5, "has 5 fields, expected 4",
    ),
    "every sample row has an extra field": (
        "SampleSubmission.csv",
        lambda p: p.write_bytes(b"\n".join(
            line + b",0" if i and line else line
            for i, line in enumerate(p.read_bytes().split(b"\n"))
        )),
        2, "has 3 fields, expected 2",
    ),
    "short line": (
        "test.csv",
        lambda p: _rewrite_line(p, 3, lambda line: line.split(b",")[0]),
        3, "has 1 fields, expected 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named(tmp_path, case):
    file, corrupt, line, problem = BAD_INPUTS[case]
    make_set(tmp_path)
    corrupt(tmp_path / file)
    code, text = summary(tmp_path)
    assert code == 1, text
    flat = " ".join(text.split())
    assert f"{tmp_path / file}, line {line}" in flat
    if line >= 2:
        assert f"(data row {line - 1})" in flat
    assert problem in flat


@pytest.mark.parametrize("file", ["training.csv", "test.csv", "IdLookupTable.csv"])
def test_empty_file(tmp_path, file):
    make_set(tmp_path)
    (tmp_path / file).write_bytes(b"")
    code, text = summary(tmp_path)
    assert code == 1
    assert f"{tmp_path / file}: the file is empty" in " ".join(text.split())


def test_header_only(tmp_path):
    make_set(tmp_path)
    path = tmp_path / "training.csv"
    path.write_bytes(path.read_bytes().split(b"\n")[0] + b"\n")
    code, text = summary(tmp_path)
    assert code == 1
    assert f"{path}: has a header but no data rows" in " ".join(text.split())


def test_zip_without_expected_member(tmp_path):
    make_set(tmp_path)
    _zip(tmp_path / "training.zip", {"train_data.csv": (tmp_path / "training.csv").read_bytes()})
    (tmp_path / "training.csv").unlink()
    code, text = summary(tmp_path)
    assert code == 1
    flat = " ".join(text.split())
    assert f"{tmp_path / 'training.zip'}: does not contain training.csv" in flat
    assert "members: train_data.csv" in flat


def test_truncated_zip(tmp_path):
    make_set(tmp_path)
    _zip(tmp_path / "training.zip", {"training.csv": (tmp_path / "training.csv").read_bytes()})
    (tmp_path / "training.csv").unlink()
    raw = (tmp_path / "training.zip").read_bytes()
    (tmp_path / "training.zip").write_bytes(raw[: len(raw) // 2])
    code, text = summary(tmp_path)
    assert code == 1
    assert f"{tmp_path / 'training.zip'}: not a readable zip archive" in " ".join(text.split())


def test_missing_path_and_empty_folder(tmp_path):
    code, text = summary(tmp_path / "nope")
    assert code == 1 and "no such file or folder" in text
    code, text = summary(tmp_path)
    assert code == 1 and "no Kaggle files found" in " ".join(text.split())


def test_crlf_and_quoted_image_are_accepted(tmp_path):
    truth = make_set(tmp_path, n_train=3)
    path = tmp_path / "training.csv"
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    rows = (x.rsplit(b",", 1) for x in lines[1:])
    quoted = [lines[0]] + [b'"' + h.replace(b",", b'","') + b'","' + img + b'"' for h, img in rows]
    path.write_bytes(b"\r\n".join(quoted) + b"\r\n")
    data = dataset.load(tmp_path, use_cache=False)
    np.testing.assert_array_equal(data.train.images, truth["images"])
    np.testing.assert_allclose(data.train.keypoints, truth["keypoints"], atol=1e-5)


# ------------------------------------------------------------------------------------------
# Cache


def test_cache_hit_and_invalidation(tmp_path, isolated_cache):
    truth = make_set(tmp_path, n_train=4)
    member = kaggle.locate(tmp_path)["training.csv"]
    first = kaggle.read_training(member)
    entries = list((isolated_cache / "parsed").glob("training-*"))
    assert any(e.name.startswith("training-") for e in entries)
    again = kaggle.read_training(member)
    np.testing.assert_array_equal(again["images"], first["images"])
    # Change one pixel: the cache must not serve the stale array.
    truth["images"][0, 0, 0] ^= 0xFF
    kaggle.write_training_csv(tmp_path / "training.csv", truth["images"], truth["keypoints"])
    changed = kaggle.read_training(kaggle.locate(tmp_path)["training.csv"])
    assert changed["images"][0, 0, 0] == truth["images"][0, 0, 0]
    assert changed["images"][0, 0, 0] != first["images"][0, 0, 0]


def test_zip_member_cache_key_follows_content(tmp_path):
    make_set(tmp_path, n_train=3)
    data = (tmp_path / "training.csv").read_bytes()
    _zip(tmp_path / "training.zip", {"training.csv": data})
    (tmp_path / "training.csv").unlink()
    key = kaggle.locate(tmp_path)["training.csv"].content_key()
    _zip(tmp_path / "training.zip", {"training.csv": data.replace(b",", b", ", 1)})
    assert kaggle.locate(tmp_path)["training.csv"].content_key() != key


def test_submission_writer(tmp_path):
    path = tmp_path / "sub.csv"
    kaggle.write_submission_csv(path, [3, 1, 2], [1.25, 95.0, 0.0])
    assert path.read_text() == "RowId,Location\n3,1.25\n1,95\n2,0\n"
