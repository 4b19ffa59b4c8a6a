"""Where a data set's labels sit relative to its pixels — found from the faces themselves.

Kaggle's coordinates are pixel indices (pixel centres on integers), so a horizontal flip maps
x to 95 − x. Keypoints converted from other annotations are often offset: 1-based (MATLAB)
landmarks, for instance, sit one pixel right of the index convention. Flip augmentation and
flip test-time augmentation on such labels teach the model a systematic x error.

The offset is measurable without any model: a face's image is close to mirror-symmetric,
so its symmetry axis can be found by correlating it with its own mirror image; in the index
convention the midpoint of the two eye centres sits on that axis on average. The median
difference over many faces is the labels' x offset.
"""

from __future__ import annotations

import numpy as np

from fkd_core.keypoints import FLIP_X_SUM, keypoint_index

_MAX_SHIFT = 12
_SNAP = 0.25  # offsets smaller than this are the index convention plus noise


def image_symmetry_axes(images: np.ndarray) -> np.ndarray:
    """Per face, the x of its mirror-symmetry axis (pixel-index coordinates), sub-pixel."""
    g = np.asarray(images, np.float32)[:, 20:80, :]
    g = g - g.mean(axis=(1, 2), keepdims=True)
    a = np.diff(g, axis=2)  # horizontal edges: robust to lighting gradients
    b = -np.flip(a, axis=2)  # the mirror image's edges
    shifts = np.arange(-_MAX_SHIFT, _MAX_SHIFT + 1)
    width = a.shape[2]
    cc = np.stack([
        (a[:, :, s:] * b[:, :, : width - s]).sum(axis=(1, 2)) if s >= 0
        else (a[:, :, :s] * b[:, :, -s:]).sum(axis=(1, 2))
        for s in shifts
    ], axis=1)
    k = np.clip(cc.argmax(axis=1), 1, len(shifts) - 2)
    rows = np.arange(len(cc))
    y0, y1, y2 = cc[rows, k - 1], cc[rows, k], cc[rows, k + 1]
    denom = y0 - 2 * y1 + y2
    frac = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1), 0.0)
    return (FLIP_X_SUM + shifts[k] + frac) / 2.0


def estimate_label_offset(images: np.ndarray, keypoints: np.ndarray,
                          max_faces: int = 4000) -> float:
    """The labels' x offset from the pixel-index convention, in pixels (0.0 for Kaggle's)."""
    le, re = keypoint_index("left_eye_center"), keypoint_index("right_eye_center")
    mid = (keypoints[:, 2 * le] + keypoints[:, 2 * re]) / 2.0
    rows = np.flatnonzero(np.isfinite(mid))[:max_faces]
    if len(rows) < 20:
        return 0.0
    offset = float(np.median(mid[rows] - image_symmetry_axes(images[rows])))
    return 0.0 if abs(offset) < _SNAP else round(offset, 2)
