"""Writing Kaggle's files (the demo set, submissions): exactly the format the readers accept,
each file written atomically so a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import _kernels
from fkd_core.files import atomic_write
from fkd_core.kaggle_format import TRAINING_COLUMNS
from fkd_core.keypoints import COLUMN_NAMES, IMAGE_SIZE, N_PIXELS


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one rename, making folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)


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
