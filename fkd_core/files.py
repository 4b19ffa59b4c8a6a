"""Writing files that matter: checked before the work, written atomically, mode by umask.

A reader never sees half a file (the bytes go to a temporary file beside the target, then
one rename), a failed write leaves nothing behind, and the new file gets the permissions any
other program's file would (``0666`` less the umask), not ``mkstemp``'s private ``0600``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written; the message says which and why."""


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` alone
    would briefly set it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there, else :class:`OutputPathError` — called before
    long work so that minutes of predicting never end in an unwritable path.

    Missing folders are not made: a typo in a folder name is an error, not a new folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name")
    parent = path.parent
    for above in (parent, *parent.parents):
        if above.exists() and not above.is_dir():
            raise OutputPathError(f"{path}: {above} is a file, not a folder")
        if above.exists():
            break
    if not parent.is_dir():
        raise OutputPathError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{path} exists and is not writable")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_args):
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
