"""Flip audit: find training faces whose left/right labels look swapped or misplaced.

Every complete row is mirrored with the training code's own flip (image and labels), the
run predicts the mirrored face, and the disagreement with the mirrored labels ranks the rows.
A row whose labels agree much better with the prediction once its left/right labels are
exchanged (same points, names swapped) is flagged as a likely swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fkd_core import metrics
from fkd_core.keypoints import (
    FLIP_COLUMN_PERMUTATION,
    FLIP_PERMUTATION,
    KEYPOINT_NAMES,
    flip_images,
    flip_keypoints,
)
from fkd_core.predict import predict_keypoints


@dataclass
class FlipAudit:
    rows: np.ndarray  # positions in the data set audited (complete rows)
    flipped_pred: np.ndarray  # prediction on the mirrored faces (mirrored frame)
    flipped_truth: np.ndarray  # mirrored labels
    error: np.ndarray  # per-row RMSE of the mirrored prediction vs mirrored labels
    swapped_error: np.ndarray  # the same with the labels' left/right names exchanged

    def table(self, row_ids: np.ndarray) -> pd.DataFrame:
        """Worst first: row id, csv line, error, error if swapped, likely-swap flag."""
        frame = pd.DataFrame({
            "position": self.rows,
            "row": row_ids[self.rows],
            "line": row_ids[self.rows] + 2,
            "flip_rmse": self.error,
            "swapped_rmse": self.swapped_error,
        })
        frame["likely_swap"] = frame.swapped_rmse < 0.5 * frame.flip_rmse
        return frame.sort_values("flip_rmse", ascending=False, ignore_index=True)


def swap_labels(keypoints: np.ndarray) -> np.ndarray:
    """Exchange left/right names without moving any point (what a labelling mistake does)."""
    return np.asarray(keypoints)[..., FLIP_COLUMN_PERMUTATION]


def swap_pair(keypoints: np.ndarray, keypoint: str) -> np.ndarray:
    """A copy of ``keypoints`` (..., 30) with one keypoint and its left/right partner
    exchanged: :func:`swap_labels` for a single pair."""
    i = KEYPOINT_NAMES.index(keypoint)
    j = int(FLIP_PERMUTATION[i])
    out = np.array(keypoints, copy=True)
    out[..., [2 * i, 2 * i + 1, 2 * j, 2 * j + 1]] = out[..., [2 * j, 2 * j + 1, 2 * i, 2 * i + 1]]
    return out


def flip_audit(model, images: np.ndarray, keypoints: np.ndarray, *, batch_size: int = 256,
               rows: np.ndarray | None = None, label_offset: float = 0.0) -> FlipAudit:
    """Audit the complete rows (or the given positions) of a data set with one model.

    ``label_offset`` is the run's calibrated label offset, so labels are mirrored about the
    data set's own axis.
    """
    if rows is None:
        rows = np.flatnonzero(np.isfinite(keypoints).all(axis=1))
    flipped_images = flip_images(images[rows])
    flipped_truth = flip_keypoints(keypoints[rows], label_offset)
    pred = predict_keypoints(model, flipped_images, batch_size=batch_size,
                             label_offset=label_offset)
    return FlipAudit(
        rows=rows,
        flipped_pred=pred,
        flipped_truth=flipped_truth,
        error=metrics.per_image_rmse(pred, flipped_truth),
        swapped_error=metrics.per_image_rmse(pred, swap_labels(flipped_truth)),
    )
