"""Reading and writing Kaggle's Facial Keypoints Detection files, strictly and fast.

A user's download comes in three layouts, all accepted: a folder of loose CSVs; a folder
with ``training.zip`` / ``test.zip`` beside the two small CSVs; or the single competition
archive ``facial-keypoints-detection.zip`` (zips inside a zip), given directly or inside a
folder. Every problem is reported as a :class:`KaggleFormatError` naming the file, the line
(and data row) and what is wrong — nothing is silently dropped.

Parsed pixel arrays are cached on disk, keyed by the file's content (zip members by their
CRC-32 and size, loose files by a BLAKE2 digest found through a stat index, as git does),
so a second load of the same file skips parsing and a changed file is parsed afresh.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import _kernels
from fkd_core.keypoints import COLUMN_NAMES, IMAGE_SIZE, N_PIXELS

TRAINING, TEST, LOOKUP, SAMPLE = (
    "training.csv",
    "test.csv",
    "IdLookupTable.csv",
    "SampleSubmission.csv",
)
ARCHIVE = "facial-keypoints-detection.zip"
LOOKUP_COLUMNS = ("RowId", "ImageId", "FeatureName", "Location")
SUBMISSION_COLUMNS = ("RowId", "Location")
TEST_COLUMNS = ("ImageId", "Image")
TRAINING_COLUMNS = (*COLUMN_NAMES, "Image")

_CACHE_VERSION = 1

Progress = Callable[[int, int], None]


class KaggleFormatError(ValueError):
    """A data file that does not match Kaggle's format; the message says where and what."""

    def __init__(self, file: str, problem: str, line: int | None = None):
        self.file, self.line, self.problem = file, line, problem
        where = file if line is None else f"{file}, line {line}"
        if line is not None and line >= 2:
            where += f" (data row {line - 1})"
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------
# Locating the files


@dataclass(frozen=True)
class Member:
    """One Kaggle CSV inside a user's download, however deeply it is zipped."""

    name: str  # e.g. "training.csv"
    chain: tuple[str, ...]  # on-disk path, then zip member names leading to the CSV

    @property
    def display(self) -> str:
        return "!".join(self.chain)

    def read_bytes(self) -> bytes:
        data = _read_chain(self.chain)
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        return data

    def content_key(self) -> str:
        """A key that changes exactly when the CSV's content changes."""
        if len(self.chain) == 1:
            return "blake2b:" + _file_digest(Path(self.chain[0]))
        # The first zipped level's CRC-32 and size identify everything inside it.
        with _open_zip(self.chain[0]) as zf:
            info = _zip_info(zf, self.chain[0], self.chain[1])
            return f"zip:{info.CRC:08x}:{info.file_size}:{'!'.join(self.chain[1:])}"


def _open_zip(path_or_bytes, label: str | None = None) -> zipfile.ZipFile:
    label = label or str(path_or_bytes)
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        return zipfile.ZipFile(src)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise KaggleFormatError(
            label, f"not a readable zip archive (truncated or corrupt): {exc}"
        ) from None


def _zip_info(zf: zipfile.ZipFile, label: str, member: str) -> zipfile.ZipInfo:
    for info in zf.infolist():
        if info.filename == member:
            return info
    members = ", ".join(i.filename for i in zf.infolist()) or "none"
    raise KaggleFormatError(label, f"does not contain {member} (members: {members})")


def _read_chain(chain: tuple[str, ...]) -> bytes:
    label, source = chain[0], chain[0]
    if len(chain) == 1:
        return Path(label).read_bytes()
    for member in chain[1:]:
        with _open_zip(source, label) as zf:
            info = _zip_info(zf, label, member)
            try:
                source = zf.read(info)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
                problem = f"cannot be extracted: {exc}"
                raise KaggleFormatError(f"{label}!{member}", problem) from None
        label = f"{label}!{member}"
    return source


def _zip_names(zf: zipfile.ZipFile) -> dict[str, str]:
    """Basename → member name, ignoring folders and macOS resource forks."""
    out = {}
    for info in zf.infolist():
        base = info.filename.rsplit("/", 1)[-1]
        if base and not info.filename.startswith("__MACOSX/") and not info.is_dir():
            out.setdefault(base, info.filename)
    return out


def locate(path: str | os.PathLike) -> dict[str, Member]:
    """Find the Kaggle CSVs in a folder or archive; returns {csv name: Member} for those present.

    Raises KaggleFormatError when the path does not exist or holds none of the files.
    """
    p = Path(path)
    if not p.exists():
        raise KaggleFormatError(str(p), "no such file or folder")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return _locate_in_folder(p.parent) | {p.name: Member(p.name, (str(p),))}
        return _locate_in_archive(p)
    found = _locate_in_folder(p)
    if not found:
        archives = sorted(p.glob("*.zip"))
        for a in archives:
            with _open_zip(str(a)) as zf:
                names = _zip_names(zf)
            if {TRAINING, "training.zip", TEST, "test.zip"} & set(names):
                return _locate_in_archive(a)
        raise KaggleFormatError(
            str(p),
            f"no Kaggle files found: expected {TRAINING} or training.zip (and {TEST} or test.zip, "
            f"{LOOKUP}, {SAMPLE}), or the competition archive {ARCHIVE}",
        )
    return found


def _locate_in_folder(folder: Path) -> dict[str, Member]:
    found: dict[str, Member] = {}
    for name in (TRAINING, TEST, LOOKUP, SAMPLE):
        csv, zipped = folder / name, folder / (Path(name).stem + ".zip")
        if csv.is_file():
            found[name] = Member(name, (str(csv),))
        elif zipped.is_file():
            with _open_zip(str(zipped)) as zf:
                names = _zip_names(zf)
            if name not in names:
                listing = ", ".join(names) or "none"
                raise KaggleFormatError(
                    str(zipped), f"does not contain {name} (members: {listing})"
                )
            found[name] = Member(name, (str(zipped), names[name]))
    return found


def _locate_in_archive(archive: Path) -> dict[str, Member]:
    with _open_zip(str(archive)) as zf:
        names = _zip_names(zf)
        found: dict[str, Member] = {}
        for name in (TRAINING, TEST, LOOKUP, SAMPLE):
            inner_zip = Path(name).stem + ".zip"
            if name in names:
                found[name] = Member(name, (str(archive), names[name]))
            elif inner_zip in names:
                label = f"{archive}!{names[inner_zip]}"
                with _open_zip(zf.read(names[inner_zip]), label) as inner:
                    inner_names = _zip_names(inner)
                if name not in inner_names:
                    members = ", ".join(inner_names) or "none"
                    raise KaggleFormatError(label, f"does not contain {name} (members: {members})")
                found[name] = Member(name, (str(archive), names[inner_zip], inner_names[name]))
    if not found:
        members = ", ".join(names) or "none"
        raise KaggleFormatError(
            str(archive),
            f"holds none of {TRAINING}, {TEST}, {LOOKUP}, {SAMPLE} (members: {members})",
        )
    return found


# --------------------------------------------------------------------------------------
# Content-keyed cache


def cache_dir() -> Path:
    """Parsed-array cache: $FKD_CACHE_DIR, else $XDG_CACHE_HOME/fkd, else ~/.cache/fkd."""
    if os.environ.get("FKD_CACHE_DIR"):
        return Path(os.environ["FKD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fkd"


def _file_digest(path: Path) -> str:
    """BLAKE2 digest of a file, remembered per (path, size, mtime, inode) so it is read once."""
    st = path.stat()
    stat_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index = cache_dir() / "stat" / hashlib.blake2b(stat_key.encode(), digest_size=16).hexdigest()
    try:
        return index.read_text().strip()
    except OSError:
        pass
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        atomic_write_bytes(index, digest.encode())
    except OSError:
        pass
    return digest


def _cache_path(kind: str, key: str) -> Path:
    name = hashlib.blake2b(f"{kind}|{key}|v{_CACHE_VERSION}".encode(), digest_size=16).hexdigest()
    return cache_dir() / "parsed" / f"{kind}-{name}"


def _cache_load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        names = json.loads((path / "arrays.json").read_text())
        return {n: np.load(path / f"{n}.npy", allow_pickle=False) for n in names}
    except (OSError, ValueError):
        return None


def _cache_store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a, allow_pickle=False)
        (tmp / "arrays.json").write_text(json.dumps(list(arrays)))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache must never break loading


def _cached(kind: str, member: Member, use_cache: bool, parse: Callable[[], dict]):
    if not use_cache:
        return parse()
    path = _cache_path(kind, member.content_key())
    hit = _cache_load(path)
    if hit is not None:
        return hit
    arrays = parse()
    _cache_store(path, arrays)
    return arrays


# --------------------------------------------------------------------------------------
# Parsing


def _split_header(data: bytes, label: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    if not data.strip():
        raise KaggleFormatError(label, "the file is empty")
    buf = np.frombuffer(data, np.uint8)
    starts, ends = _kernels.line_bounds(buf)
    header = data[starts[0] : ends[0]].decode("utf-8", "replace")
    columns = [c.strip().strip('"').strip() for c in header.split(",")]
    # Drop trailing empty lines only; an empty line in the middle is an error.
    last = len(starts)
    while last > 1 and ends[last - 1] == starts[last - 1]:
        last -= 1
    return columns, buf, starts[1:last], ends[1:last]


def _check_columns(label: str, columns: list[str], expected: tuple[str, ...]) -> None:
    missing = [c for c in expected if c not in columns]
    unexpected = [c for c in columns if c not in expected]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    problems = []
    for c in missing:
        close = difflib.get_close_matches(c, unexpected, n=1)
        hint = f" (found {close[0]!r} — misspelled?)" if close else ""
        problems.append(f"missing column {c!r}{hint}")
    problems += [f"unexpected column {c!r}" for c in unexpected]
    problems += [f"column {c!r} appears more than once" for c in dupes]
    if problems:
        raise KaggleFormatError(label, "; ".join(problems), line=1)
    if columns[-1] != "Image":
        raise KaggleFormatError(label, "the Image column must be the last column", line=1)


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
    short = np.flatnonzero(img_start < 0)
    if len(short):
        r = int(short[0])
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


def _fields_frame(label, buf, starts, img_start, columns) -> pd.DataFrame:
    """The non-Image fields of every row as strings (empty string where blank)."""
    text = b"\n".join(bytes(buf[s : e - 1]) for s, e in zip(starts, img_start))
    if not columns:
        return pd.DataFrame(index=range(len(starts)))
    return pd.read_csv(
        io.BytesIO(text),
        header=None,
        names=columns,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
    )


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


def _parse_image_csv(member: Member, expected: tuple[str, ...], progress: Progress | None):
    label = member.display
    data = member.read_bytes()
    columns, buf, starts, ends = _split_header(data, label)
    _check_columns(label, columns, expected)
    if len(starts) == 0:
        raise KaggleFormatError(label, "has a header but no data rows")
    images, img_start = _parse_images(label, buf, starts, ends, len(columns) - 1, progress)
    frame = _fields_frame(label, buf, starts, img_start, columns[:-1])
    return images, frame


def read_training(
    member: Member, *, use_cache: bool = True, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """training.csv → {"images": uint8 (N,96,96), "keypoints": float32 (N,30) NaN=missing}."""

    def parse():
        images, frame = _parse_image_csv(member, TRAINING_COLUMNS, progress)
        label = member.display
        kp = np.stack([_numeric(label, frame, c, allow_empty=True) for c in COLUMN_NAMES], 1)
        return {"images": images, "keypoints": kp.astype(np.float32)}

    return _cached("training", member, use_cache, parse)


def read_test(
    member: Member, *, use_cache: bool = True, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """test.csv → {"image_ids": int64 (M,), "images": uint8 (M,96,96)}."""

    def parse():
        images, frame = _parse_image_csv(member, TEST_COLUMNS, progress)
        ids = _integers(member.display, frame, "ImageId")
        _no_duplicates(member.display, ids, "ImageId")
        return {"image_ids": ids, "images": images}

    return _cached("test", member, use_cache, parse)


def _read_small_csv(member: Member, expected: tuple[str, ...]) -> pd.DataFrame:
    label = member.display
    data = member.read_bytes()
    if not data.strip():
        raise KaggleFormatError(label, "the file is empty")
    try:
        frame = pd.read_csv(
            io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        raise KaggleFormatError(label, f"not a valid CSV: {exc}") from None
    columns = [c.strip() for c in frame.columns]
    frame.columns = columns
    missing = [c for c in expected if c not in columns]
    unexpected = [c for c in columns if c not in expected]
    if missing or unexpected:
        _check_columns(label, [*columns, "Image"], (*expected, "Image"))
    if len(frame) == 0:
        raise KaggleFormatError(label, "has a header but no data rows")
    ragged = frame.isna().any(axis=1).to_numpy()
    if ragged.any():
        line = int(ragged.argmax()) + 2
        raise KaggleFormatError(label, "fewer fields than the header", line=line)
    return frame


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


# --------------------------------------------------------------------------------------
# Writing (atomic: write beside the target, then rename)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _format_float(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.6f}".rstrip("0").rstrip(".")


def format_image_strings(images: np.ndarray) -> list[bytes]:
    """Kaggle ``Image`` strings for uint8 images (N, 96, 96)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be uint8 (N, 96, 96), got {images.dtype} {images.shape}")
    return _kernels.format_pixel_rows(images.reshape(len(images), N_PIXELS))


def write_training_csv(path, images: np.ndarray, keypoints: np.ndarray) -> None:
    """Write training.csv: 30 coordinate columns (blank where NaN) then Image."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (len(images), len(COLUMN_NAMES)):
        raise ValueError(f"keypoints must be (N, 30) for N={len(images)}, got {keypoints.shape}")
    pixels = format_image_strings(images)
    lines = [",".join(TRAINING_COLUMNS).encode()]
    for kp, px in zip(keypoints, pixels):
        lines.append(",".join(_format_float(v) for v in kp).encode() + b"," + px)
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")


def write_test_csv(path, image_ids: np.ndarray, images: np.ndarray) -> None:
    """Write test.csv: ImageId, Image."""
    pixels = format_image_strings(images)
    lines = [b"ImageId,Image"]
    lines += [b"%d,%s" % (int(i), px) for i, px in zip(image_ids, pixels)]
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")


def write_lookup_csv(path, lookup: pd.DataFrame) -> None:
    """Write IdLookupTable.csv from RowId, ImageId, FeatureName (Location left empty)."""
    out = lookup[["RowId", "ImageId", "FeatureName"]].copy()
    out["Location"] = ""
    atomic_write_bytes(path, out.to_csv(index=False, lineterminator="\n").encode())


def write_submission_csv(path, row_ids, locations) -> None:
    """Write a submission (or SampleSubmission.csv): exactly ``RowId,Location``."""
    row_ids = np.asarray(row_ids, dtype=np.int64)
    locations = np.asarray(locations, dtype=np.float64)
    if row_ids.shape != locations.shape:
        raise ValueError("row_ids and locations must have the same length")
    lines = ["RowId,Location"] + [
        f"{r},{_format_float(v) or '0'}" for r, v in zip(row_ids.tolist(), locations.tolist())
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
