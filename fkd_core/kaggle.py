"""Reading Kaggle's Facial Keypoints Detection files, strictly and fast.

Every problem is reported as a :class:`KaggleFormatError` naming the file, the line (and data
row) and what is wrong — nothing is silently dropped, and however large a bad file is, the
check stays linear in its size and the message stays short.

This module is also the data layer's public face: it re-exports the names other code uses
from the modules that hold them — :mod:`~fkd_core.kaggle_format` (file names, columns, the
error), :mod:`~fkd_core.kaggle_files` (finding the CSVs in folders and zips),
:mod:`~fkd_core.parse_cache` (the content-keyed cache of parsed arrays) and
:mod:`~fkd_core.kaggle_write` (the writers).
"""

from __future__ import annotations

import csv
import difflib
import io
from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd

from fkd_core import _kernels, parse_cache
from fkd_core.kaggle_files import Member, locate
from fkd_core.kaggle_format import (
    ARCHIVE,
    LOOKUP,
    LOOKUP_COLUMNS,
    NAMED,
    SAMPLE,
    SUBMISSION_COLUMNS,
    TEST,
    TEST_COLUMNS,
    TRAINING,
    TRAINING_COLUMNS,
    KaggleFormatError,
    short,
    some,
)
from fkd_core.kaggle_write import (
    atomic_write_bytes,
    format_image_strings,
    write_lookup_csv,
    write_submission_csv,
    write_test_csv,
    write_training_csv,
)
from fkd_core.keypoints import COLUMN_NAMES, IMAGE_SIZE, N_PIXELS
from fkd_core.parse_cache import cache_dir

__all__ = [
    "ARCHIVE", "LOOKUP", "LOOKUP_COLUMNS", "SAMPLE", "SUBMISSION_COLUMNS", "TEST",
    "TEST_COLUMNS", "TRAINING", "TRAINING_COLUMNS", "KaggleFormatError", "Member", "Progress",
    "atomic_write_bytes", "cache_dir", "format_image_strings", "locate", "read_lookup",
    "read_sample_submission", "read_test", "read_training", "write_lookup_csv",
    "write_submission_csv", "write_test_csv", "write_training_csv",
]

Progress = Callable[[int, int], None]

#: Misspelling hints compare each missing column with at most this many unexpected ones, of
#: at most _HINT_CHARS characters: a header of thousands of strange columns gets no hint.
_HINT_POOL, _HINT_CHARS = 100, 64


# --------------------------------------------------------------------------------------
# Headers


def _split_header(data: bytes, label: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    if not data.strip():
        raise KaggleFormatError(label, "the file is empty")
    buf = np.frombuffer(data, np.uint8)
    starts, ends = _kernels.line_bounds(buf)
    header = data[starts[0] : ends[0]].decode("utf-8")
    columns = [c.strip().strip('"').strip() for c in header.split(",")]
    # Drop trailing empty lines only; an empty line in the middle is an error.
    last = len(starts)
    while last > 1 and ends[last - 1] == starts[last - 1]:
        last -= 1
    return columns, buf, starts[1:last], ends[1:last]


def _check_columns(label: str, columns: list[str], expected: tuple[str, ...]) -> None:
    """Missing, unexpected and repeated columns, found in time linear in the header's width
    and reported by naming the first few of each."""
    wanted, present = set(expected), set(columns)
    missing = [c for c in expected if c not in present]
    unexpected = list(dict.fromkeys(c for c in columns if c not in wanted))
    repeated = [c for c, k in Counter(columns).items() if k > 1]
    pool = [c for c in unexpected[:_HINT_POOL] if len(c) <= _HINT_CHARS]
    problems = []
    if missing:
        named = []
        for c in missing[:NAMED]:
            close = difflib.get_close_matches(c, pool, n=1)
            hint = f" (found {close[0]!r} — misspelled?)" if close else ""
            named.append(f"missing column {c!r}{hint}")
        problems.append(some(named, "more missing columns", len(missing), "; "))
    if unexpected:
        named = [f"unexpected column {short(c)}" for c in unexpected[:NAMED]]
        problems.append(some(named, "more unexpected columns", len(unexpected), "; "))
    if repeated:
        named = [f"column {short(c)} appears more than once" for c in repeated[:NAMED]]
        problems.append(some(named, "more repeated columns", len(repeated), "; "))
    if problems:
        raise KaggleFormatError(label, "; ".join(problems), line=1)


# --------------------------------------------------------------------------------------
# Parsing


def _parse_images(
    label: str,
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    n_before: int,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of every row's last field as uint8 (N, 96, 96), and where each field starts."""
    n = len(starts)
    empty = np.flatnonzero(ends == starts)
    if len(empty):
        raise KaggleFormatError(label, "empty line", line=int(empty[0]) + 2)
    img_start = _kernels.nth_comma(buf, starts, ends, n_before)
    too_short = np.flatnonzero(img_start < 0)
    if len(too_short):
        r = int(too_short[0])
        found = bytes(buf[starts[r] : ends[r]]).count(b",") + 1
        raise KaggleFormatError(
            label, f"has {found} fields, expected {n_before + 1} (truncated line?)", line=r + 2
        )
    images = np.empty((n, N_PIXELS), np.uint8)
    chunk = max(256, n // 20)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        codes, counts, where = _kernels.parse_pixels(
            buf, img_start[lo:hi], ends[lo:hi], images[lo:hi]
        )
        bad = np.flatnonzero(codes)
        if len(bad):
            r = int(bad[0])
            _raise_pixel_error(label, buf, lo + r, codes[r], counts[r], where[r], img_start[lo + r])
        if progress:
            progress(hi, n)
    return images.reshape(n, IMAGE_SIZE, IMAGE_SIZE), img_start


def _raise_pixel_error(label, buf, row, code, count, where, start) -> None:
    line = row + 2
    if code == _kernels.WRONG_COUNT:
        raise KaggleFormatError(
            label, f"Image has {count} values, expected {N_PIXELS} (96×96)", line=line
        )
    stops = (32, 9, 10, 13, 34, 44)
    token_start, token_end = where, where + 1
    while token_start > start and buf[token_start - 1] not in stops:
        token_start -= 1
    while token_end < len(buf) and buf[token_end] not in stops:
        token_end += 1
    token = bytes(buf[token_start:token_end]).decode("utf-8", "replace")
    position = len(bytes(buf[start:token_start]).split()) + 1
    if code == _kernels.TOO_LARGE:
        problem = f"Image value {token} at position {position} is outside 0–255"
    elif token == ",":
        problem = "more fields than the header names (a comma inside Image)"
    else:
        problem = f"Image holds {token!r} at position {position}, expected integers 0–255"
    raise KaggleFormatError(label, problem, line=line)


def _fields_frame(buf, starts, img_start, columns) -> pd.DataFrame:
    """The non-Image fields of every row as strings (empty string where blank).

    Every line is one record: quotes are literal, so a stray one cannot swallow the lines
    after it, and only a pair enclosing a whole field is removed (spreadsheets add them).
    """
    text = b"\n".join(bytes(buf[s : e - 1]) for s, e in zip(starts, img_start))
    if not columns:
        return pd.DataFrame(index=range(len(starts)))
    frame = pd.read_csv(
        io.BytesIO(text),
        header=None,
        names=columns,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
        quoting=csv.QUOTE_NONE,
        lineterminator="\n",
    )
    return frame.replace(r'^\s*"(.*)"\s*$', r"\1", regex=True)


def _numeric(label: str, frame: pd.DataFrame, column: str, allow_empty: bool) -> np.ndarray:
    raw = frame[column].str.strip()
    values = pd.to_numeric(raw.where(raw != ""), errors="coerce").to_numpy(np.float64)
    bad = (raw != "").to_numpy() & ~np.isfinite(values)
    if not allow_empty:
        bad |= (raw == "").to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = f"{raw.iloc[r]!r} is not a number" if raw.iloc[r] else "is empty"
        raise KaggleFormatError(label, f"column {column}: {what}", line=r + 2)
    return values


def _integers(label: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = _numeric(label, frame, column, allow_empty=False)
    frac = np.flatnonzero(values != np.round(values))
    if len(frac):
        r = int(frac[0])
        raise KaggleFormatError(
            label, f"column {column}: {frame[column].iloc[r]!r} is not an integer", line=r + 2
        )
    return values.astype(np.int64)


def _no_duplicates(label: str, ids: np.ndarray, column: str) -> None:
    counts = np.unique(ids, return_counts=True)[1]
    if (counts > 1).any():
        seen: dict[int, int] = {}
        for r, v in enumerate(ids.tolist()):
            if v in seen:
                raise KaggleFormatError(
                    label, f"{column} {v} already appears on line {seen[v] + 2}", line=r + 2
                )
            seen[v] = r


def _parse_image_csv(
    label: str, data: bytes, expected: tuple[str, ...], progress: Progress | None
) -> tuple[np.ndarray, pd.DataFrame]:
    columns, buf, starts, ends = _split_header(data, label)
    _check_columns(label, columns, expected)
    if columns[-1] != "Image":
        raise KaggleFormatError(label, "the Image column must be the last column", line=1)
    if len(starts) == 0:
        raise KaggleFormatError(label, "has a header but no data rows")
    images, img_start = _parse_images(label, buf, starts, ends, len(columns) - 1, progress)
    frame = _fields_frame(buf, starts, img_start, columns[:-1])
    return images, frame


def _cached(kind: str, names: tuple[str, ...], member: Member, use_cache: bool, parse):
    if not use_cache:
        return parse(member.read_bytes())
    return parse_cache.cached(kind, names, member.known_key, member.read_keyed, parse)


def read_training(
    member: Member, *, use_cache: bool = True, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """training.csv → {"images": uint8 (N,96,96), "keypoints": float32 (N,30) NaN=missing}."""
    label = member.display

    def parse(data: bytes) -> dict[str, np.ndarray]:
        images, frame = _parse_image_csv(label, data, TRAINING_COLUMNS, progress)
        kp = np.stack([_numeric(label, frame, c, allow_empty=True) for c in COLUMN_NAMES], 1)
        return {"images": images, "keypoints": kp.astype(np.float32)}

    return _cached("training", ("images", "keypoints"), member, use_cache, parse)


def read_test(
    member: Member, *, use_cache: bool = True, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """test.csv → {"image_ids": int64 (M,), "images": uint8 (M,96,96)}."""
    label = member.display

    def parse(data: bytes) -> dict[str, np.ndarray]:
        images, frame = _parse_image_csv(label, data, TEST_COLUMNS, progress)
        ids = _integers(label, frame, "ImageId")
        _no_duplicates(label, ids, "ImageId")
        return {"image_ids": ids, "images": images}

    return _cached("test", ("image_ids", "images"), member, use_cache, parse)


def _read_small_csv(member: Member, expected: tuple[str, ...]) -> pd.DataFrame:
    """A small CSV's fields as strings; every row must have exactly the header's fields."""
    label = member.display
    data = member.read_bytes()
    if not data.strip():
        raise KaggleFormatError(label, "the file is empty")
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    blank = None
    records: list[list[str]] = []
    try:
        columns = [c.strip() for c in next(reader)]
        _check_columns(label, columns, expected)
        for row in reader:
            if not row:
                blank = blank or reader.line_num
            elif blank is not None:
                raise KaggleFormatError(label, "empty line", line=blank)
            elif len(row) != len(columns):
                raise KaggleFormatError(
                    label, f"has {len(row)} fields, expected {len(columns)}", line=reader.line_num
                )
            else:
                records.append(row)
    except csv.Error as exc:
        raise KaggleFormatError(label, f"not a valid CSV: {exc}", line=reader.line_num) from None
    if not records:
        raise KaggleFormatError(label, "has a header but no data rows")
    return pd.DataFrame(records, columns=columns, dtype=str)


def read_lookup(member: Member, test_ids: np.ndarray | None = None) -> pd.DataFrame:
    """IdLookupTable.csv → DataFrame(RowId, ImageId, FeatureName), validated against test.csv."""
    label = member.display
    frame = _read_small_csv(member, LOOKUP_COLUMNS)
    row_ids = _integers(label, frame, "RowId")
    image_ids = _integers(label, frame, "ImageId")
    _no_duplicates(label, row_ids, "RowId")
    features = frame["FeatureName"].str.strip()
    unknown = np.flatnonzero(~features.isin(COLUMN_NAMES).to_numpy())
    if len(unknown):
        r = int(unknown[0])
        close = difflib.get_close_matches(features.iloc[r], COLUMN_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KaggleFormatError(
            label, f"FeatureName {features.iloc[r]!r} is not a keypoint column{hint}", line=r + 2
        )
    if test_ids is not None:
        missing = np.flatnonzero(~np.isin(image_ids, test_ids))
        if len(missing):
            r = int(missing[0])
            raise KaggleFormatError(
                label, f"ImageId {image_ids[r]} is not an ImageId of {TEST}", line=r + 2
            )
    pairs = pd.Series(list(zip(image_ids.tolist(), features)))
    dup = np.flatnonzero(pairs.duplicated().to_numpy())
    if len(dup):
        r = int(dup[0])
        raise KaggleFormatError(
            label, f"ImageId {image_ids[r]} asks for {features.iloc[r]} twice", line=r + 2
        )
    return pd.DataFrame({"RowId": row_ids, "ImageId": image_ids, "FeatureName": features})


def read_sample_submission(member: Member) -> pd.DataFrame:
    """SampleSubmission.csv → DataFrame(RowId, Location)."""
    frame = _read_small_csv(member, SUBMISSION_COLUMNS)
    row_ids = _integers(member.display, frame, "RowId")
    _no_duplicates(member.display, row_ids, "RowId")
    loc = _numeric(member.display, frame, "Location", allow_empty=True)
    return pd.DataFrame({"RowId": row_ids, "Location": loc})
