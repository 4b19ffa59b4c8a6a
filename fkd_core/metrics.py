"""Errors in pixels, Kaggle's way: RMSE over the coordinates a row labels (NaN = not labelled).

One definition used by training reports, ``fkd evaluate``, ensembles' weights and the
dashboard, so every number a user sees is comparable.
"""

from __future__ import annotations

import numpy as np

from fkd_core.keypoints import N_KEYPOINTS


def _sq_err(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared error with 0 where the truth is missing, which coordinates are labelled).

    A NaN or infinite prediction of a labelled coordinate stays NaN/inf in the error, so
    every score it takes part in is NaN/inf: a broken model never gets a good score.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"predictions {pred.shape} and truth {truth.shape} differ in shape")
    labelled = np.isfinite(truth)
    with np.errstate(invalid="ignore", over="ignore"):
        sq = np.where(labelled, (pred - np.where(labelled, truth, 0.0)) ** 2, 0.0)
    return sq, labelled


def _root_mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(total / np.maximum(n, 1)), np.nan)


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle's score: sqrt(mean squared error over every labelled coordinate)."""
    sq, labelled = _sq_err(pred, truth)
    return float(_root_mean(sq.sum(), labelled.sum()))


def per_keypoint_rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RMSE per keypoint (15,), over the x and y of the rows labelling it (NaN if none do)."""
    sq, labelled = _sq_err(pred, truth)
    sq = sq.reshape(-1, N_KEYPOINTS, 2)
    n = labelled.reshape(-1, N_KEYPOINTS, 2).sum(axis=(0, 2))
    return _root_mean(sq.sum(axis=(0, 2)), n)


def per_image_rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RMSE per image (N,), over the coordinates that image labels (NaN if it labels none)."""
    sq, labelled = _sq_err(pred, truth)
    sq = sq.reshape(-1, N_KEYPOINTS * 2)
    return _root_mean(sq.sum(axis=1), labelled.reshape(len(sq), -1).sum(axis=1))


def per_keypoint_distance(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean error per image and keypoint (N, 15) in pixels; NaN where not labelled."""
    sq, labelled = _sq_err(pred, truth)
    sq = np.where(labelled, sq, np.nan).reshape(-1, N_KEYPOINTS, 2)
    return np.sqrt(sq.sum(axis=2))
