"""Finding Kaggle's CSVs in a user's download, however it is laid out, and reading their bytes.

A download comes in three layouts, all accepted: a folder of loose CSVs; a folder with
``training.zip`` / ``test.zip`` beside the two small CSVs; or the single competition archive
``facial-keypoints-detection.zip`` (zips inside a zip), given directly or inside a folder.
A path that holds none of the files is an error that says what was expected.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from fkd_core import parse_cache
from fkd_core.kaggle_format import (
    ARCHIVE,
    CSV_NAMES,
    EXPECTED_FILES,
    TEST,
    TRAINING,
    KaggleFormatError,
    short,
    some,
)

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Member:
    """One Kaggle CSV inside a user's download, however deeply it is zipped."""

    name: str  # e.g. "training.csv"
    chain: tuple[str, ...]  # on-disk path, then zip member names leading to the CSV

    @property
    def display(self) -> str:
        return "!".join(self.chain)

    def read_bytes(self) -> bytes:
        """The CSV's bytes, byte-order mark removed, checked to be UTF-8 text."""
        if len(self.chain) == 1:
            with self._reading():
                return self._checked(Path(self.chain[0]).read_bytes())
        return self._checked(_read_chain(self.chain)[0])

    def read_keyed(self) -> tuple[bytes, str]:
        """The CSV's checked bytes and the content key of exactly those bytes."""
        if len(self.chain) == 1:
            with self._reading():
                data, digest = parse_cache.read_and_digest(Path(self.chain[0]))
            return self._checked(data), "blake2b:" + digest
        data, info = _read_chain(self.chain)
        return self._checked(data), self._zip_key(info)

    def _checked(self, data: bytes) -> bytes:
        if data.startswith(_BOM):
            data = data[len(_BOM):]
        check_text(data, self.display)
        return data

    def known_key(self) -> str | None:
        """The content key found without reading the CSV, or None when it cannot be."""
        if len(self.chain) == 1:
            digest = parse_cache.indexed_digest(Path(self.chain[0]))
            return None if digest is None else "blake2b:" + digest
        with _open_zip(self.chain[0]) as zf:
            return self._zip_key(_zip_info(zf, self.chain[0], self.chain[1]))

    def content_key(self) -> str:
        """A key that changes exactly when the CSV's content changes."""
        if len(self.chain) == 1:
            with self._reading():
                return "blake2b:" + parse_cache.file_digest(Path(self.chain[0]))
        return self.known_key()

    @contextlib.contextmanager
    def _reading(self):
        """A loose file that vanished or cannot be read since it was found is a named error."""
        try:
            yield
        except OSError as exc:
            raise KaggleFormatError(
                self.display, f"cannot be read: {exc.strerror or exc}"
            ) from None

    def _zip_key(self, info: zipfile.ZipInfo) -> str:
        # The first zipped level's CRC-32 and size identify everything inside it; zipfile
        # checks the CRC of what it extracts, so extracted bytes always match their key.
        return f"zip:{info.CRC:08x}:{info.file_size}:{'!'.join(self.chain[1:])}"


def check_text(data: bytes, label: str) -> None:
    """Raise a :class:`KaggleFormatError` at the first byte that is not UTF-8 text."""
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = exc.start
    else:
        return
    line_start = data.rfind(b"\n", 0, pos) + 1
    line = data.count(b"\n", 0, pos) + 1
    field = data.count(b",", line_start, pos) + 1
    header = data[: data.find(b"\n")].decode("utf-8", "replace").split(",")
    name = f" ({short(header[field - 1].strip())})" if line > 1 and field <= len(header) else ""
    problem = (
        f"byte 0x{data[pos]:02x} in field {field}{name}, byte {pos - line_start + 1} of the "
        "line, is not UTF-8 text (a binary or wrongly encoded file?)"
    )
    raise KaggleFormatError(label, problem, line=line)


def _open_zip(path_or_bytes, label: str | None = None) -> zipfile.ZipFile:
    label = label or str(path_or_bytes)
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        return zipfile.ZipFile(src)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise KaggleFormatError(
            label, f"not a readable zip archive (truncated or corrupt): {exc}"
        ) from None


def _listing(zf: zipfile.ZipFile) -> str:
    return some([i.filename for i in zf.infolist()], "more members")


def _zip_info(zf: zipfile.ZipFile, label: str, member: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(member)
    except KeyError:
        raise KaggleFormatError(
            label, f"does not contain {member} (members: {_listing(zf)})"
        ) from None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> bytes:
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise KaggleFormatError(f"{label}!{info.filename}", f"cannot be extracted: {exc}") from None


def _read_chain(chain: tuple[str, ...]) -> tuple[bytes, zipfile.ZipInfo]:
    """The innermost member's bytes, and the first zipped level's entry (its CRC and size)."""
    label, source, first = chain[0], chain[0], None
    for member in chain[1:]:
        with _open_zip(source, label) as zf:
            info = _zip_info(zf, label, member)
            first = first or info
            source = _extract(zf, info, label)
        label = f"{label}!{member}"
    return source, first


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

    Raises KaggleFormatError when the path does not exist or holds none of the files — a CSV
    of another name, a stray file or a folder of unrelated files is not silently "no data".
    """
    p = Path(path)
    if not p.exists():
        raise KaggleFormatError(str(p), "no such file or folder")
    if p.is_file():
        if p.name in CSV_NAMES:
            return _locate_in_folder(p.parent) | {p.name: Member(p.name, (str(p),))}
        if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
            return _locate_in_archive(p)
        raise KaggleFormatError(str(p), f"not one of Kaggle's files: {EXPECTED_FILES}")
    found = _locate_in_folder(p)
    if found:
        return found
    unreadable = []
    for a in sorted(p.glob("*.zip"), key=lambda a: a.name != ARCHIVE):
        if a.name == ARCHIVE:
            return _locate_in_archive(a)
        try:
            with _open_zip(str(a)) as zf:
                names = _zip_names(zf)
        except KaggleFormatError:
            unreadable.append(a.name)  # somebody else's broken zip is not Kaggle's problem
            continue
        if {TRAINING, "training.zip", TEST, "test.zip"} & set(names):
            return _locate_in_archive(a)
    problem = f"no Kaggle files found: {EXPECTED_FILES}"
    if unreadable:
        problem += f" (skipped unreadable zip archives: {some(unreadable)})"
    raise KaggleFormatError(str(p), problem)


def _locate_in_folder(folder: Path) -> dict[str, Member]:
    found: dict[str, Member] = {}
    for name in CSV_NAMES:
        csv, zipped = folder / name, folder / (Path(name).stem + ".zip")
        if csv.is_file():
            found[name] = Member(name, (str(csv),))
        elif zipped.is_file():
            with _open_zip(str(zipped)) as zf:
                names = _zip_names(zf)
                if name not in names:
                    raise KaggleFormatError(
                        str(zipped), f"does not contain {name} (members: {_listing(zf)})"
                    )
            found[name] = Member(name, (str(zipped), names[name]))
    return found


def _locate_in_archive(archive: Path) -> dict[str, Member]:
    with _open_zip(str(archive)) as zf:
        names = _zip_names(zf)
        found: dict[str, Member] = {}
        for name in CSV_NAMES:
            inner_zip = Path(name).stem + ".zip"
            if name in names:
                found[name] = Member(name, (str(archive), names[name]))
            elif inner_zip in names:
                label = f"{archive}!{names[inner_zip]}"
                inner_bytes = _extract(zf, zf.getinfo(names[inner_zip]), str(archive))
                with _open_zip(inner_bytes, label) as inner:
                    inner_names = _zip_names(inner)
                    if name not in inner_names:
                        raise KaggleFormatError(
                            label, f"does not contain {name} (members: {_listing(inner)})"
                        )
                found[name] = Member(name, (str(archive), names[inner_zip], inner_names[name]))
        if not found:
            raise KaggleFormatError(
                str(archive),
                f"holds none of {', '.join(CSV_NAMES)} (members: {_listing(zf)})",
            )
    return found

