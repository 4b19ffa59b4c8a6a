"""Label corrections: an append-only log kept beside the user's data, never inside it.

Each line says when, which data (its content fingerprint), which training row and keypoint,
the value before and after (``missing`` to un-label), why and a note. The log is replayed on
top of training.csv in order, so an undo is just one more line restoring the old value, and
every step can be checked: a line whose "before" is not what the data holds at that point
is an error, as is a row or keypoint that does not exist or a log made for other data.

Appends take an exclusive lock and write whole lines with one call, so two dashboard
sessions (or threads) correcting at once lose nothing.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fkd_core.keypoints import KEYPOINT_NAMES

HEADER = ("time", "data", "row", "keypoint", "old_x", "old_y", "new_x", "new_y", "reason",
          "note")
MISSING = "missing"
_TOLERANCE = 1e-3


class CorrectionsError(ValueError):
    """A corrections log that cannot be applied; the message names the file, line and why."""


@dataclass(frozen=True)
class Correction:
    row: int
    keypoint: str
    old: tuple[float, float]  # NaN: was not labelled
    new: tuple[float, float]  # NaN: mark missing
    reason: str = ""
    note: str = ""
    data: str = ""
    time: str = ""


def default_path(fingerprint: str) -> Path:
    """Where corrections of this data live unless told: a per-user fkd folder, one file per
    data fingerprint ($FKD_HOME, else $XDG_DATA_HOME/fkd, else ~/.local/share/fkd)."""
    home = os.environ.get("FKD_HOME") or Path(
        os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "fkd"
    return Path(home) / "corrections" / f"{fingerprint[:32] or 'unknown'}.csv"


def format_value(v: float) -> str:
    return MISSING if not math.isfinite(v) else f"{v:.9g}"  # round-trips float32 exactly


def format_point(xy) -> str:
    return ",".join(format_value(float(v)) for v in xy)


def _line(c: Correction) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([
        c.time, c.data, c.row, c.keypoint, format_value(c.old[0]), format_value(c.old[1]),
        format_value(c.new[0]), format_value(c.new[1]), c.reason, c.note,
    ])
    return buf.getvalue()


def append(path: str | os.PathLike, corrections: Iterable[Correction], fingerprint: str) -> None:
    """Append corrections (stamped with the time and ``fingerprint``) under an exclusive lock."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    lines = "".join(_line(replace(c, data=fingerprint, time=c.time or stamp))
                    for c in corrections)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == 0:
            lines = ",".join(HEADER) + "\n" + lines
        os.write(fd, lines.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _number(path: Path, line: int, field: str, text: str) -> float:
    if text == MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CorrectionsError(f"{path}, line {line}: {field} must be a number or "
                               f"'{MISSING}', not {text[:20]!r}") from None
    if not math.isfinite(value) or not -1000 <= value <= 1000:
        raise CorrectionsError(f"{path}, line {line}: {field} {text[:20]!r} is not a pixel "
                               "coordinate")
    return value


def read(path: str | os.PathLike) -> list[Correction]:
    """Every correction in the log, in order; a malformed line is a named error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CorrectionsError(f"{path}: cannot read the corrections log ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    if tuple(rows[0]) != HEADER:
        raise CorrectionsError(f"{path}, line 1: not a corrections log (expected the header "
                               f"{','.join(HEADER)})")
    out = []
    for line, fields in enumerate(rows[1:], start=2):
        if len(fields) != len(HEADER):
            raise CorrectionsError(f"{path}, line {line}: {len(fields)} fields, expected "
                                   f"{len(HEADER)}")
        f = dict(zip(HEADER, fields))
        try:
            row = int(f["row"])
        except ValueError:
            raise CorrectionsError(f"{path}, line {line}: row must be a whole number, not "
                                   f"{f['row'][:20]!r}") from None
        if f["keypoint"] not in KEYPOINT_NAMES:
            raise CorrectionsError(f"{path}, line {line}: unknown keypoint "
                                   f"{f['keypoint'][:40]!r}")
        nums = [_number(path, line, k, f[k]) for k in ("old_x", "old_y", "new_x", "new_y")]
        out.append(Correction(row, f["keypoint"], (nums[0], nums[1]), (nums[2], nums[3]),
                              f["reason"], f["note"], f["data"], f["time"]))
    return out


def _same(a: tuple[float, float], b: np.ndarray) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= _TOLERANCE
               for x, y in zip(a, b.tolist()))


def apply(keypoints: np.ndarray, row_ids: np.ndarray, path: str | os.PathLike,
          fingerprint: str) -> tuple[np.ndarray, int]:
    """(corrected copy of ``keypoints``, number of corrections) after replaying the log."""
    corrections = read(path)
    return replay(keypoints, row_ids, corrections, path, fingerprint), len(corrections)


def replay(keypoints: np.ndarray, row_ids: np.ndarray, corrections: list[Correction],
           path: str | os.PathLike, fingerprint: str) -> np.ndarray:
    """A corrected copy of ``keypoints``: the log's lines (already :func:`read` from
    ``path``, named in errors) applied in order, each checked against the data."""
    path = Path(path)
    out = np.array(keypoints, dtype=np.float32, copy=True)
    position = {int(r): i for i, r in enumerate(row_ids)}
    for line, c in enumerate(corrections, start=2):
        if c.data != fingerprint:
            raise CorrectionsError(
                f"{path}, line {line}: made for other data (fingerprint {c.data[:16]!r}, this "
                f"training.csv is {fingerprint[:16]!r})")
        if c.row not in position:
            raise CorrectionsError(f"{path}, line {line}: row {c.row} is not in the training "
                                   f"data (rows 0-{len(row_ids) - 1})")
        k = KEYPOINT_NAMES.index(c.keypoint)
        current = out[position[c.row], 2 * k:2 * k + 2]
        if not _same(c.old, current):
            raise CorrectionsError(
                f"{path}, line {line}: row {c.row} {c.keypoint} is {format_point(current)} at "
                f"this point, but the log says {format_point(c.old)}")
        out[position[c.row], 2 * k:2 * k + 2] = c.new
    return out


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the log as applied (recorded in a run's config.json)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def corrected(data, path: str | os.PathLike):
    """``data`` (a KeypointSet) with the log applied, and what a run records about it."""
    keypoints, count = apply(data.keypoints, data.row_ids, path, data.fingerprint)
    fixed = data.subset(np.arange(len(data)))
    fixed.keypoints = keypoints
    return fixed, {"path": str(path), "sha256": file_digest(path), "count": count}
