"""The on-disk cache of parsed arrays, keyed by the content of the file they were parsed from.

Entries are stored under the key of exactly the bytes that were parsed (not of whatever the
file holds a moment later), so an entry can never describe other content than its key says.
Finding a loose file's key without reading it uses a stat index, as git does: (path, size,
mtime, ctime, inode, device) → BLAKE2 digest. ctime is in it because it is the one time stamp
no program can set: ``cp -p`` and ``os.utime`` restore an mtime, but any write moves ctime.
A file changed in the last :data:`SETTLE_NS` is not indexed, since a second change within the
same time-stamp tick would leave its stat unchanged (git's "racy clean" problem).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fkd_core.files import atomic_write

VERSION = 1
#: How long after its last change a file's stat is trusted to identify its content. Two
#: seconds covers the coarsest time stamps in use (FAT's) as well as a kernel's coarse clock.
SETTLE_NS = 2_000_000_000
_DIGEST_BYTES = 20


def cache_dir() -> Path:
    """Parsed-array cache: $FKD_CACHE_DIR, else $XDG_CACHE_HOME/fkd, else ~/.cache/fkd."""
    if os.environ.get("FKD_CACHE_DIR"):
        return Path(os.environ["FKD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fkd"


def _stat_key(path: Path, st: os.stat_result) -> str:
    return "|".join(
        map(str, (path.resolve(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                  st.st_dev))
    )


def _index_path(stat_key: str) -> Path:
    return cache_dir() / "stat" / hashlib.blake2b(stat_key.encode(), digest_size=16).hexdigest()


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS


def indexed_digest(path: Path) -> str | None:
    """The file's content digest from the stat index, or None when its stat is not indexed."""
    try:
        digest = _index_path(_stat_key(path, path.stat())).read_text().strip()
    except OSError:
        return None
    return digest if len(digest) == 2 * _DIGEST_BYTES else None


def read_and_digest(path: Path) -> tuple[bytes, str]:
    """A file's bytes and their BLAKE2 digest; the digest is indexed by the file's stat when the
    file did not change while it was read and has settled."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    digest = hashlib.blake2b(data, digest_size=_DIGEST_BYTES).hexdigest()
    if _stat_key(path, before) == _stat_key(path, after) and _settled(after):
        try:
            index = _index_path(_stat_key(path, after))
            index.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(index) as out:
                out.write(digest)
        except OSError:
            pass  # a read-only or full cache only costs a re-read next time
    return data, digest


def file_digest(path: Path) -> str:
    """BLAKE2 digest of a file's content, read only when the stat index does not know it."""
    return indexed_digest(path) or read_and_digest(path)[1]


def entry_path(kind: str, key: str) -> Path:
    name = hashlib.blake2b(f"{kind}|{key}|v{VERSION}".encode(), digest_size=16).hexdigest()
    return cache_dir() / "parsed" / f"{kind}-{name}"


def load(path: Path, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of an entry, or None when it is missing or is not exactly ``names``."""
    try:
        if json.loads((path / "arrays.json").read_text()) != list(names):
            return None
        return {n: np.load(path / f"{n}.npy", allow_pickle=False) for n in names}
    except (OSError, ValueError):
        return None


def store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an entry beside its place, then rename it there; on any failure (a full disk, or
    another process that stored the same entry first) nothing is left behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a, allow_pickle=False)
        (tmp / "arrays.json").write_text(json.dumps(list(arrays)))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise  # a read-only or full cache must never break loading; anything else must


def cached(
    kind: str,
    names: Sequence[str],
    known_key: Callable[[], str | None],
    read: Callable[[], tuple[bytes, str]],
    parse: Callable[[bytes], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``parse(bytes)``, served from the cache when the content's key is known and stored.

    ``known_key`` gives the key without reading the content (None when unknown); ``read``
    gives the content and the key of exactly those bytes, which is what a new entry is filed
    under.
    """
    key = known_key()
    if key is not None:
        hit = load(entry_path(kind, key), names)
        if hit is not None:
            return hit
    data, read_key = read()
    if read_key != key:
        hit = load(entry_path(kind, read_key), names)
        if hit is not None:
            return hit
    arrays = parse(data)
    store(entry_path(kind, read_key), arrays)
    return arrays
