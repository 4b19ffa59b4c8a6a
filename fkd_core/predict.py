"""Model inference in pixel coordinates, with optional horizontal-flip test-time augmentation."""

from __future__ import annotations

import numpy as np

from fkd_core.keypoints import flip_images, flip_keypoints
from fkd_core.targets import denormalise_keypoints


def predict_keypoints(model, images: np.ndarray, *, tta: bool = False, batch_size: int = 256,
                      label_offset: float = 0.0):
    """Keypoints (N, 30) in pixels for uint8 images (N, 96, 96).

    Models predict in the pixel-index convention; ``label_offset`` (a run's calibrated
    offset, :mod:`fkd_core.calibration`) moves x back into its data set's convention.
    With ``tta`` the model also sees each face mirrored; that prediction is mirrored back
    (x → 95 − x, left/right labels swapped) and averaged with the plain one.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (96, 96):
        raise ValueError(f"images must be (N, 96, 96), got {images.shape}")
    if len(images) == 0:
        return np.zeros((0, 30), np.float32)

    def run(x):
        x = x.astype(np.float32)[..., None] / 255.0
        out = model.predict(x, batch_size=batch_size, verbose=0)
        return denormalise_keypoints(np.asarray(out, np.float32))

    pred = run(images)
    if tta:
        pred = 0.5 * (pred + flip_keypoints(run(flip_images(images))))
    pred[:, 0::2] += label_offset
    return pred.astype(np.float32)
