"""Hostile input to the Kaggle readers: bytes that are not text, paths that hold no Kaggle file,
headers of a million columns. Each is a named error through the real CLI, never a traceback,
a silent success or a minutes-long check."""

from __future__ import annotations

import time
import zipfile

import pytest
from test_kaggle import make_set, runner, summary

from fkd_core import kaggle
from fkd_core.cli import app
from fkd_core.kaggle_format import EXPECTED_FILES, LOOKUP_COLUMNS, TRAINING_COLUMNS


def _edit_line(path, line: int, edit) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_bytes(b"\n".join(lines))


NOT_TEXT = {
    # file, edit of line 3, the message after "line 3 (data row 2): "
    "pixel": (
        "training.csv", lambda s: s[:-1] + b"\xff",
        "in field 31 ('Image'), byte {col} of the line, is not UTF-8 text",
    ),
    "coordinate": (
        "training.csv", lambda s: b"\xff" + s[1:],
        "byte 0xff in field 1 ('left_eye_center_x'), byte 1 of the line, is not UTF-8 text",
    ),
    "test ImageId": (
        "test.csv", lambda s: b"\xff" + s,
        "byte 0xff in field 1 ('ImageId'), byte 1 of the line, is not UTF-8 text",
    ),
    "lookup FeatureName": (
        "IdLookupTable.csv", lambda s: s.replace(b",left", b",\xe9left"),
        "byte 0xe9 in field 3 ('FeatureName'), byte 5 of the line, is not UTF-8 text",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_TEXT))
def test_byte_that_is_not_utf8_is_named(tmp_path, case):
    file, edit, problem = NOT_TEXT[case]
    make_set(tmp_path, seed=11)
    path = tmp_path / file
    _edit_line(path, 3, edit)
    problem = problem.format(col=len(path.read_bytes().split(b"\n")[2]))
    code, text = summary(tmp_path)
    assert code == 1, text
    assert f"error: {path}, line 3 (data row 2): " in " ".join(text.split())
    assert problem in " ".join(text.split())


def test_utf8_text_that_is_not_a_number_keeps_its_own_message(tmp_path):
    """Only undecodable bytes are a text error: a Unicode minus is reported as a bad number."""
    make_set(tmp_path, seed=12)
    _edit_line(tmp_path / "training.csv", 4, lambda s: "−".encode() + s)
    code, text = summary(tmp_path)
    assert code == 1, text
    flat = " ".join(text.split())
    assert f"{tmp_path / 'training.csv'}, line 4 (data row 3): column left_eye_center_x:" in flat
    assert "is not a number" in flat


def _unrelated_folder(tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a Kaggle file\n")
    (folder / "broken.zip").write_bytes(b"")  # somebody else's truncated download
    return folder


NO_KAGGLE_FILES = {
    "empty .txt": (lambda t: (t / "empty.txt", b""), "not one of Kaggle's files"),
    "empty .csv": (lambda t: (t / "empty.csv", b""), "not one of Kaggle's files"),
    "other .csv": (lambda t: (t / "train.csv", b"a,b\n1,2\n"), "not one of Kaggle's files"),
    "zip of other files": (lambda t: (t / "photos.zip", None), "holds none of training.csv"),
    "folder of other files": (lambda t: (_unrelated_folder(t), None), "no Kaggle files found"),
}


@pytest.mark.parametrize("case", sorted(NO_KAGGLE_FILES))
def test_path_without_kaggle_files_is_an_error(tmp_path, case):
    make, problem = NO_KAGGLE_FILES[case]
    make_set(tmp_path / "elsewhere", seed=13)  # real Kaggle files nearby must not be picked up
    path, content = make(tmp_path)
    if content is not None:
        path.write_bytes(content)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("face.png", b"\x89PNG")
    result = runner.invoke(app, ["data", "summary", str(path)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1, flat
    assert f"error: {path}: {problem}" in flat
    if case != "zip of other files":
        assert EXPECTED_FILES in flat


def test_named_kaggle_csv_is_still_accepted(tmp_path):
    make_set(tmp_path, seed=14)
    code, text = summary(tmp_path / "training.csv")
    assert code == 0, text
    assert "training rows        6" in text
    assert "test images          4" in text  # its siblings come with it


def _wide_header(columns: list[str], n_extra: int) -> list[str]:
    extra = [f"extra{i}" for i in range(n_extra)]
    return [*columns[:-1], *extra, columns[0], columns[-1]]  # columns[0] repeated


@pytest.mark.parametrize(
    "file, expected",
    [("training.csv", TRAINING_COLUMNS), ("IdLookupTable.csv", LOOKUP_COLUMNS)],
)
def test_wide_header_is_checked_fast_with_a_short_message(tmp_path, file, expected):
    """200 000 columns: every offender class named by its first few and counted, quickly."""
    make_set(tmp_path, seed=15)
    path = tmp_path / file
    header = _wide_header(list(expected), 200_000)
    path.write_bytes(",".join(header).encode() + b"\n" + path.read_bytes().split(b"\n", 1)[1])
    t = time.perf_counter()
    with pytest.raises(kaggle.KaggleFormatError) as info:
        member = kaggle.locate(tmp_path)[file]
        if file == "training.csv":
            kaggle.read_training(member, use_cache=False)
        else:
            kaggle.read_lookup(member)
    elapsed = time.perf_counter() - t
    message = str(info.value)
    assert message.startswith(f"{path}, line 1: unexpected column 'extra0'; ")
    assert "unexpected column 'extra4'; … and 199995 more unexpected columns" in message
    assert f"column {expected[0]!r} appears more than once" in message
    assert len(message) < 1000, len(message)
    assert elapsed < 10, elapsed


def test_header_message_names_a_few_missing_columns_and_counts_the_rest(tmp_path):
    make_set(tmp_path, seed=16)
    path = tmp_path / "training.csv"
    _edit_line(path, 1, lambda h: b"nose_tip_X," + h.split(b",", 30)[-1])  # keep only Image
    code, text = summary(tmp_path)
    assert code == 1, text
    flat = " ".join(text.split())
    assert (
        f"{path}, line 1: missing column 'left_eye_center_x'; missing column 'left_eye_center_y'"
    ) in flat
    assert "… and 25 more missing columns; unexpected column 'nose_tip_X'" in flat


def test_long_column_name_is_cut_in_the_message(tmp_path):
    make_set(tmp_path, seed=17)
    path = tmp_path / "test.csv"
    _edit_line(path, 1, lambda h: b"ImageId," + b"x" * 100_000 + b",Image")
    with pytest.raises(kaggle.KaggleFormatError) as info:
        kaggle.read_test(kaggle.locate(tmp_path)["test.csv"], use_cache=False)
    message = str(info.value)
    assert f"unexpected column '{'x' * 40}'… (100000 characters)" in message
    assert len(message) < 300


def test_file_gone_between_locating_and_reading_is_named(tmp_path):
    make_set(tmp_path, seed=18)
    member = kaggle.locate(tmp_path)["test.csv"]
    (tmp_path / "test.csv").unlink()
    for read in (kaggle.read_test, lambda m: kaggle.read_test(m, use_cache=False)):
        with pytest.raises(kaggle.KaggleFormatError) as info:
            read(member)
        gone = f"{tmp_path / 'test.csv'}: cannot be read: No such file or directory"
        assert str(info.value) == gone
