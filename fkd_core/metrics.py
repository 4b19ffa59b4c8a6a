"""Errors in pixels, Kaggle's way: RMSE over the coordinates a row labels (NaN = not labelled).

One definition used by training reports, ``fkd evaluate``, ensembles' weights and the
dashboard, so every number a user sees is comparable.
"""

from __future__ import annotations

import numpy as np

from fkd_core.keypoints import N_KEYPOINTS


def _sq_err(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"predictions {pred.shape} and truth {truth.shape} differ in shape")
    return (pred - truth) ** 2  # NaN where the truth is missing


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle's score: sqrt(mean squared error over every labelled coordinate)."""
    sq = _sq_err(pred, truth)
    n = np.isfinite(sq).sum()
    return float(np.sqrt(np.nansum(sq) / n)) if n else float("nan")


def per_keypoint_rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RMSE per keypoint (15,), over the x and y of the rows labelling it (NaN if none do)."""
    sq = _sq_err(pred, truth).reshape(-1, N_KEYPOINTS * 2)
    sq = sq.reshape(len(sq), N_KEYPOINTS, 2)
    n = np.isfinite(sq).sum(axis=(0, 2))
    total = np.nansum(sq, axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(total / np.maximum(n, 1)), np.nan)


def per_image_rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RMSE per image (N,), over the coordinates that image labels (NaN if it labels none)."""
    sq = _sq_err(pred, truth).reshape(-1, N_KEYPOINTS * 2)
    n = np.isfinite(sq).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(np.nansum(sq, axis=1) / np.maximum(n, 1)), np.nan)


def per_keypoint_distance(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean error per image and keypoint (N, 15) in pixels; NaN where not labelled."""
    sq = _sq_err(pred, truth).reshape(-1, N_KEYPOINTS, 2)
    return np.sqrt(sq.sum(axis=2))
