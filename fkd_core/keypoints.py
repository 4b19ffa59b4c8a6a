"""The keypoint schema: names, Kaggle column order, flip permutation, groups and colours.

Coordinate convention (stated once, used everywhere): Kaggle's coordinates are pixel
indices of a 96×96 image, so pixel centres sit on integers, x grows to the right of the
image and y grows downwards. "Left" and "right" are the *subject's*: the subject's left
eye appears on the image's right (larger x). A horizontal flip maps x to ``95 - x`` and
swaps every left/right pair of keypoint labels.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 96
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
FLIP_X_SUM = IMAGE_SIZE - 1  # flipped x = FLIP_X_SUM - x
#: The frame: where a keypoint can lie — the image's extent, pixel centres at 0 … 95, so its
#: edges are half a pixel beyond them. Submissions clip to it, augmentation makes keypoints
#: pushed outside it missing, the dashboard draws exactly it.
FRAME = (-0.5, IMAGE_SIZE - 0.5)

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
N_KEYPOINTS = len(KEYPOINT_NAMES)
N_COORDS = 2 * N_KEYPOINTS

#: The 30 coordinate columns of training.csv, in Kaggle's order (x then y per keypoint).
COLUMN_NAMES: tuple[str, ...] = tuple(f"{n}_{a}" for n in KEYPOINT_NAMES for a in ("x", "y"))

#: Labelled on (almost) every Kaggle training row; the rest only on the complete ~30 %.
ALWAYS_PRESENT: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "nose_tip",
    "mouth_center_bottom_lip",
)

GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": (
        "left_eye_center",
        "right_eye_center",
        "left_eye_inner_corner",
        "left_eye_outer_corner",
        "right_eye_inner_corner",
        "right_eye_outer_corner",
    ),
    "eyebrows": (
        "left_eyebrow_inner_end",
        "left_eyebrow_outer_end",
        "right_eyebrow_inner_end",
        "right_eyebrow_outer_end",
    ),
    "nose": ("nose_tip",),
    "mouth": (
        "mouth_left_corner",
        "mouth_right_corner",
        "mouth_center_top_lip",
        "mouth_center_bottom_lip",
    ),
}


def _mirror_name(name: str) -> str:
    if "left" in name:
        return name.replace("left", "right")
    if "right" in name:
        return name.replace("right", "left")
    return name


#: FLIP_PERMUTATION[i] is the keypoint whose label keypoint i takes after a horizontal flip.
FLIP_PERMUTATION: np.ndarray = np.array(
    [KEYPOINT_NAMES.index(_mirror_name(n)) for n in KEYPOINT_NAMES], dtype=np.int64
)
#: The same permutation over the 30 coordinate columns.
FLIP_COLUMN_PERMUTATION: np.ndarray = np.stack(
    [2 * FLIP_PERMUTATION, 2 * FLIP_PERMUTATION + 1], axis=1
).reshape(-1)


def side(name: str) -> str:
    """'left', 'right' or 'centre' — the subject's side of a keypoint."""
    return "left" if "left" in name else "right" if "right" in name else "centre"


# Warm hues on the subject's left, cool hues on the right, neutral on the midline, so a
# swapped label shows as a colour on the wrong side of the face.
_SIDE_PALETTES = {
    "left": ["#d62728", "#ff7f0e", "#e377c2", "#bcbd22", "#8c564b", "#ff9896", "#f7b6d2"],
    "right": ["#1f77b4", "#17becf", "#2ca02c", "#9467bd", "#393b79", "#aec7e8", "#98df8a"],
    "centre": ["#ffffff", "#ffd700", "#7f7f7f"],
}


def _colours() -> dict[str, str]:
    counters = {"left": 0, "right": 0, "centre": 0}
    out = {}
    for n in KEYPOINT_NAMES:
        s = side(n)
        out[n] = _SIDE_PALETTES[s][counters[s]]
        counters[s] += 1
    return out


#: A fixed colour per keypoint; left (warm) and right (cool) are always distinct.
KEYPOINT_COLOURS: dict[str, str] = _colours()


def group_of(name: str) -> str:
    for g, members in GROUPS.items():
        if name in members:
            return g
    raise KeyError(name)


def keypoint_index(name: str) -> int:
    try:
        return KEYPOINT_NAMES.index(name)
    except ValueError:
        valid = ", ".join(KEYPOINT_NAMES)
        raise KeyError(f"unknown keypoint {name!r}; expected one of {valid}") from None


def column_indices(names) -> np.ndarray:
    """Indices into the 30 coordinate columns for the given keypoint names (x, y each)."""
    idx = [keypoint_index(n) for n in names]
    return np.array([c for i in idx for c in (2 * i, 2 * i + 1)], dtype=np.int64)


def flip_keypoints(keypoints: np.ndarray, label_offset: float = 0.0) -> np.ndarray:
    """Keypoints (..., 30) of the horizontally flipped image: mirror x, swap left/right.

    ``label_offset`` is how far a data set's x labels sit right of the pixel-index
    convention (see :mod:`fkd_core.calibration`); the mirror is then x → 95 + 2·offset − x.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    out = kp[..., FLIP_COLUMN_PERMUTATION].copy()
    out[..., 0::2] = FLIP_X_SUM + 2.0 * label_offset - out[..., 0::2]
    return out


def flip_images(images: np.ndarray) -> np.ndarray:
    """Mirror images (..., H, W) or (..., H, W, C) left-right (the W axis of a 96×96 image)."""
    images = np.asarray(images)
    axis = -1 if images.shape[-1] == IMAGE_SIZE and images.shape[-2] == IMAGE_SIZE else -2
    return np.flip(images, axis=axis)


def in_frame(keypoints: np.ndarray, label_offset: float = 0.0) -> np.ndarray:
    """Bool (..., 15): whether each keypoint (both coordinates) lies inside :data:`FRAME`.

    ``label_offset`` moves the frame's x range into a data set's label convention.
    """
    pts = as_points(keypoints)
    lo, hi = FRAME
    x, y = pts[..., 0] - label_offset, pts[..., 1]
    return (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)


def clip_to_frame(keypoints: np.ndarray, label_offset: float = 0.0) -> np.ndarray:
    """Keypoints (..., 30) clipped into :data:`FRAME` (x shifted by ``label_offset``)."""
    out = np.array(keypoints, dtype=np.float32, copy=True)
    lo, hi = FRAME
    out[..., 0::2] = np.clip(out[..., 0::2], lo + label_offset, hi + label_offset)
    out[..., 1::2] = np.clip(out[..., 1::2], lo, hi)
    return out


def as_points(keypoints: np.ndarray) -> np.ndarray:
    """(..., 30) → (..., 15, 2) view as (x, y) per keypoint."""
    kp = np.asarray(keypoints)
    return kp.reshape(*kp.shape[:-1], N_KEYPOINTS, 2)
