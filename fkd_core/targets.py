"""The one definition of the models' target scaling: pixel coordinates ↔ normalised.

Models regress ``(pixel - 47.5) / 48``: 47.5 is the centre of the 96-pixel index range
0…95, so the image maps to roughly [-1, 1] and a constant-zero prediction is the image
centre. Keeping targets near unit scale lets every architecture use the same optimiser
settings; errors are converted back with ``SCALE`` (48 pixels per normalised unit).
Missing targets stay NaN through both maps.
"""

from __future__ import annotations

import numpy as np

from fkd_core.keypoints import IMAGE_SIZE

CENTRE = (IMAGE_SIZE - 1) / 2  # 47.5: middle of the pixel-index range
SCALE = IMAGE_SIZE / 2  # 48.0 pixels per normalised unit

_ARRAY_LIKE = (np.ndarray, np.generic, list, tuple, int, float)


def _as_float(kp):
    """Array-likes become float arrays (float32 unless already floating); tensors pass through."""
    if not isinstance(kp, _ARRAY_LIKE):
        return kp  # a tf/keras tensor or a DataFrame: plain arithmetic keeps its type
    arr = np.asarray(kp)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float32)


def normalise_keypoints(kp):
    """Pixel coordinates (..., 30) → normalised model targets; works on arrays and tensors."""
    return (_as_float(kp) - CENTRE) / SCALE


def denormalise_keypoints(kp):
    """Normalised model outputs (..., 30) → pixel coordinates; inverse of normalise_keypoints."""
    return _as_float(kp) * SCALE + CENTRE
