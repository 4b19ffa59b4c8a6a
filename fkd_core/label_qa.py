"""Suspicious labels: which training keypoints are probably wrong, why, and where they belong.

Four kinds of evidence, each scored in the same unit — robust standard deviations of the
ordinary disagreement between labels and predictions — so one list ranks them all:

- **residual**: a labelled keypoint far from where models put it (out-of-fold predictions,
  so no face is judged by a model that saw it);
- **swap**: the labels fit the predictions clearly better with left/right names exchanged,
  for the whole face or one pair (the flip audit's :func:`~fkd_core.audit.swap_labels`);
- **shape**: a 15-point shape that is an outlier after Procrustes alignment (Mahalanobis
  distance under a shape model of the training labels), or an order violation such as the
  subject's left eye at smaller x than the right;
- **duplicate**: the same image (content hash after downsampling) labelled differently.

A keypoint explained by a swap is not listed again as a residual, so one mistake takes one
row of the list. Functions take arrays and return arrays or frames; training the out-of-fold
models is :func:`out_of_fold_predictions`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from fkd_core.audit import swap_labels, swap_pair
from fkd_core.keypoints import (
    FLIP_PERMUTATION,
    KEYPOINT_NAMES,
    N_KEYPOINTS,
    as_points,
)

COLUMNS = ("row", "line", "keypoint", "reason", "score", "suggested_x", "suggested_y")
#: Below these scores nothing is reported (robust standard deviations).
RESIDUAL_MIN, SWAP_MIN, SHAPE_MIN, DUPLICATE_MIN = 3.0, 4.0, 4.0, 3.0
_MIN_SCALE = 0.5  # px: never trust labels to better than this
_PAIRS = [(i, int(j)) for i, j in enumerate(FLIP_PERMUTATION) if i < j]


def _suspects(rows, keypoints, reasons, scores, suggested=None) -> pd.DataFrame:
    rows = np.asarray(rows, np.int64)
    suggested = np.full((len(rows), 2), np.nan) if suggested is None else np.asarray(suggested)
    return pd.DataFrame({
        "row": rows, "line": rows + 2, "keypoint": pd.Series(list(keypoints), dtype=str),
        "reason": pd.Series(list(reasons), dtype=str),
        "score": np.asarray(scores, np.float64), "suggested_x": suggested[:, 0],
        "suggested_y": suggested[:, 1],
    }, columns=list(COLUMNS))


def _distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label-to-prediction distance, the same with left/right names exchanged), (N, 15) px."""
    pred_pts = as_points(pred)
    return (np.linalg.norm(as_points(truth) - pred_pts, axis=2),
            np.linalg.norm(as_points(swap_labels(truth)) - pred_pts, axis=2))


def residual_scale(dist: np.ndarray, dist_swapped: np.ndarray) -> np.ndarray:
    """Per keypoint (15,), the robust spread of label-to-prediction distances (px),
    measured as if every swap were undone: swapped labels must not widen the yardstick
    they are measured with."""
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.fmin(dist, dist_swapped), axis=0)
    return np.maximum(np.nan_to_num(1.4826 * med, nan=1.0), _MIN_SCALE)


def prediction_suspects(pred: np.ndarray, truth: np.ndarray, row_ids: np.ndarray
                        ) -> pd.DataFrame:
    """Swaps (whole face, then single pairs) and residuals of labels against predictions."""
    pred_pts = as_points(pred)
    dist, dist_sw = _distances(pred, truth)  # NaN where unlabelled
    scale = residual_scale(dist, dist_sw)
    z, z_sw = dist / scale, dist_sw / scale
    explained = np.zeros_like(z, bool)
    out = []
    left = np.array([i for i, _ in _PAIRS])
    right = np.array([j for _, j in _PAIRS])
    gain = (z[:, left] + z[:, right]) - (z_sw[:, left] + z_sw[:, right])  # (N, pairs)
    labelled = np.isfinite(gain)
    n_pairs = labelled.sum(axis=1)
    with np.errstate(invalid="ignore"):
        improves = (gain > 0) & labelled
        face_gain = np.where(labelled, gain, 0.0).sum(axis=1) / np.sqrt(np.maximum(n_pairs, 1))
        whole = (n_pairs >= 1) & (improves.sum(axis=1) >= np.maximum(1, 0.75 * n_pairs)) \
            & (n_pairs >= 2) & (face_gain >= SWAP_MIN)
    for r in np.flatnonzero(whole):
        out.append(_suspects([row_ids[r]], [""], ["swap: the whole face's left and right"],
                             [face_gain[r]]))
        explained[r, left[labelled[r]]] = explained[r, right[labelled[r]]] = True
    pair_score = gain / np.sqrt(2.0)
    for r, p in zip(*np.nonzero(np.nan_to_num(pair_score) >= SWAP_MIN)):
        i, j = _PAIRS[p]
        if explained[r, i]:
            continue
        explained[r, i] = explained[r, j] = True
        out.append(_suspects(
            [row_ids[r]], [KEYPOINT_NAMES[i]],
            [f"swap: {KEYPOINT_NAMES[i]} and {KEYPOINT_NAMES[j]} exchanged"], [pair_score[r, p]],
            pred_pts[r, i][None]))
    resid = np.nan_to_num(z) >= RESIDUAL_MIN
    rr, kk = np.nonzero(resid & ~explained)
    out.append(_suspects(
        row_ids[rr], [KEYPOINT_NAMES[k] for k in kk],
        [f"residual: {d:.1f} px from the prediction" for d in dist[rr, kk]], z[rr, kk],
        pred_pts[rr, kk]))
    return pd.concat(out, ignore_index=True)


def procrustes_align(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each shape (N, K, 2) moved, rotated and scaled onto ``reference`` (K, 2)."""
    x = points - points.mean(axis=1, keepdims=True)
    ref = reference - reference.mean(axis=0)
    # Best similarity transform per shape, in closed form with complex numbers.
    xc = x[..., 0] + 1j * x[..., 1]
    rc = ref[:, 0] + 1j * ref[:, 1]
    a = (np.conj(xc) * rc).sum(axis=1) / (np.abs(xc) ** 2).sum(axis=1)
    yc = xc * a[:, None]
    return np.stack([yc.real, yc.imag], axis=2)


def shape_suspects(truth: np.ndarray, row_ids: np.ndarray) -> pd.DataFrame:
    """Complete rows whose aligned shape is an outlier, and order violations on any row."""
    pts = as_points(truth)
    complete = np.isfinite(truth).all(axis=1)
    out = []
    if complete.sum() > 4 * N_KEYPOINTS:
        shapes = pts[complete].astype(np.float64)
        mean = shapes.mean(axis=0)
        for _ in range(3):  # generalised Procrustes: align, re-average
            aligned = procrustes_align(shapes, mean)
            mean = aligned.mean(axis=0)
        flat = aligned.reshape(len(aligned), -1)
        centred = flat - flat.mean(axis=0)
        cov = np.cov(centred, rowvar=False)
        cov += np.eye(len(cov)) * 1e-3 * np.trace(cov) / len(cov)  # shrink: 4 dof are gauge
        m = np.sqrt(np.einsum("ni,ij,nj->n", centred, np.linalg.pinv(cov), centred))
        mad = 1.4826 * np.median(np.abs(m - np.median(m)))
        score = (m - np.median(m)) / max(mad, 1e-6)
        hits = np.flatnonzero(score >= SHAPE_MIN)
        out.append(_suspects(row_ids[complete][hits], [""] * len(hits),
                             ["shape: unlike the training set's faces"] * len(hits),
                             score[hits]))
    out.append(order_suspects(pts, row_ids))
    return pd.concat(out, ignore_index=True)


_ORDER_RULES = (  # (keypoint a, axis, keypoint b, what): a must be greater than b on axis
    ("left_eye_center", 0, "right_eye_center", "the subject's left eye at smaller x than the "
     "right"),
    ("mouth_left_corner", 0, "mouth_right_corner", "the subject's left mouth corner at "
     "smaller x than the right"),
    ("nose_tip", 1, "left_eye_center", "the nose above the eyes"),
    ("mouth_center_bottom_lip", 1, "nose_tip", "the mouth above the nose"),
    ("mouth_center_bottom_lip", 1, "mouth_center_top_lip", "the bottom lip above the top lip"),
)


def order_suspects(pts: np.ndarray, row_ids: np.ndarray) -> pd.DataFrame:
    """Rows breaking the face's left/right and top/bottom order (by more than 1 px)."""
    out = []
    for a, axis, b, what in _ORDER_RULES:
        ia, ib = KEYPOINT_NAMES.index(a), KEYPOINT_NAMES.index(b)
        margin = pts[:, ib, axis] - pts[:, ia, axis]  # > 0: broken
        hits = np.flatnonzero(np.nan_to_num(margin, nan=-1.0) > 1.0)
        out.append(_suspects(row_ids[hits], [a] * len(hits), [f"order: {what}"] * len(hits),
                             SHAPE_MIN + margin[hits] / 2.0))
    return pd.concat(out, ignore_index=True)


def image_hashes(images: np.ndarray, size: int = 24, levels: int = 32) -> np.ndarray:
    """A content hash per face that survives re-encoding noise: 4×4 mean-pooled, quantised."""
    n, h, w = images.shape
    f = h // size
    pooled = images.reshape(n, size, f, size, f).mean(axis=(2, 4))
    q = np.floor(pooled * levels / 256.0).astype(np.uint8)
    return np.array([hashlib.blake2b(x.tobytes(), digest_size=8).hexdigest() for x in q])


def duplicate_suspects(images: np.ndarray, truth: np.ndarray, row_ids: np.ndarray,
                       pred: np.ndarray | None = None, scale: float = 1.0) -> pd.DataFrame:
    """Identical images whose labels disagree: the copy furthest from the prediction (or
    every copy after the first, without predictions)."""
    hashes = image_hashes(images)
    frame = pd.DataFrame({"h": hashes, "i": np.arange(len(hashes))})
    rows, scores, notes = [], [], []
    for _, group in frame.groupby("h"):
        idx = group.i.to_numpy()
        if len(idx) < 2:
            continue
        labels = truth[idx]
        both = np.isfinite(labels).all(axis=0)
        if not both.any():
            continue
        # Two labellings of one image differ per coordinate by noise of sd sigma * sqrt(2);
        # sqrt(chi-square) - sqrt(dof) is then about a standard normal score.
        sigma = max(scale, _MIN_SCALE) / 1.745  # scale is the 2-D distance yardstick
        diff = labels[:, both] - labels[0, both]
        chi2 = (diff[1:] ** 2).sum(axis=1).max() / (2 * sigma**2)
        score = np.sqrt(chi2) - np.sqrt(both.sum())
        if score < DUPLICATE_MIN:
            continue
        if pred is not None:
            err = np.sqrt(np.nanmean((labels - pred[idx]) ** 2, axis=1))
            worst = [idx[int(np.nanargmax(err))]]
        else:
            worst = list(idx[1:])
        for i in worst:
            others = ", ".join(str(row_ids[j]) for j in idx if j != i)
            rows.append(row_ids[i])
            scores.append(score)
            notes.append(f"duplicate: same image as row {others}, labelled differently")
    return _suspects(rows, [""] * len(rows), notes, scores)


def find_suspects(images: np.ndarray, truth: np.ndarray, row_ids: np.ndarray,
                  pred: np.ndarray | None = None, *, limit: int | None = None) -> pd.DataFrame:
    """Every suspect, most suspicious first, one row per (face, keypoint) at most."""
    parts = [shape_suspects(truth, row_ids)]
    scale = 1.0
    if pred is not None:
        parts.insert(0, prediction_suspects(pred, truth, row_ids))
        scale = float(np.median(residual_scale(*_distances(pred, truth))))
    parts.append(duplicate_suspects(images, truth, row_ids, pred, scale))
    found = pd.concat(parts, ignore_index=True)
    found = found.sort_values("score", ascending=False, kind="stable")
    # One mistake, one row: a face-level swap or a differently labelled duplicate explains
    # its face's other suspects, and a prediction's specific finding explains that face's
    # shape and order oddities.
    whole_swap = found.row[(found.keypoint == "")
                           & found.reason.str.startswith(("swap", "duplicate"))]
    found = found[(found.keypoint == "") | ~found.row.isin(whole_swap)]
    specific = found.row[found.reason.str.startswith(("swap", "residual"))]
    generic = found.reason.str.startswith(("shape", "order"))
    found = found[~(generic & found.row.isin(specific))]
    face_level = found[found.keypoint == ""].drop_duplicates("row")
    keypoint_level = found[found.keypoint != ""].drop_duplicates(["row", "keypoint"])
    found = pd.concat([face_level, keypoint_level]).sort_values(
        ["score", "row"], ascending=[False, True], kind="stable", ignore_index=True)
    return found if limit is None else found.head(limit)


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """A seeded fold number (0 … folds-1) per row, folds of equal size ±1."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, not {folds}")
    fold = np.arange(n) % folds
    return fold[np.random.default_rng(seed).permutation(n)]


def out_of_fold_predictions(data, config, folds: int, *, seed: int = 0,
                            progress: Callable[[int, int], None] | None = None,
                            verbose=0) -> np.ndarray:
    """(N, 30) flip-TTA predictions, each row's from a model trained without its fold.

    Each fold's model is an ordinary training (:func:`fkd_core.training.train`) into a
    temporary folder, deleted afterwards: the audit leaves no runs behind.
    """
    import tempfile

    from fkd_core import runs, training

    fold = fold_of(len(data), folds, seed)
    pred = np.full((len(data), 2 * N_KEYPOINTS), np.nan, np.float32)
    with tempfile.TemporaryDirectory(prefix="fkd-folds-") as tmp:
        for k in range(folds):
            if progress:
                progress(k, folds)
            held = np.flatnonzero(fold == k)
            path = training.train(data.subset(np.flatnonzero(fold != k)), config, tmp,
                                  run_id=f"fold-{k}", verbose=verbose)
            pred[held] = runs.read_run(path).predict(data.images[held], tta=True)
    if progress:
        progress(folds, folds)
    return pred


def plant_errors(truth: np.ndarray, images: np.ndarray, complete: np.ndarray, seed: int = 0,
                 n: int = 4):
    """Known mistakes in a copy of the labels (and images), to measure the finder: whole-face
    and single-pair left/right swaps, keypoints moved 8-15 px, images duplicated with other
    labels. Returns (labels, images, [(row position, keypoint or '' for the face), ...])."""
    rng = np.random.default_rng(seed)
    truth, images = truth.copy(), images.copy()
    planted = []
    rows = rng.permutation(np.flatnonzero(complete))
    swaps, pairs, moved, dups = np.cumsum([n, n, 2 * n, n])
    for r in rows[:swaps]:  # whole-face left/right swaps
        truth[r] = swap_labels(truth[r])
        planted.append((r, ""))
    for r in rows[swaps:pairs]:  # one pair swapped
        truth[r] = swap_pair(truth[r], "mouth_left_corner")
        planted.append((r, "mouth_left_corner"))
    for r in rows[pairs:moved]:  # one keypoint moved 8-15 px
        k = int(rng.integers(15))
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(8, 15)
        truth[r, 2 * k] += dist * np.cos(angle)
        truth[r, 2 * k + 1] += dist * np.sin(angle)
        planted.append((r, KEYPOINT_NAMES[k]))
    for a, b in zip(rows[moved:dups], rows[dups:dups + n]):  # one image twice, other labels
        images[b] = images[a]
        truth[b] = truth[a] + rng.choice([-1, 1], size=30) * 4.0
        planted.append((b, ""))
    return truth, images, planted


def recall(suspects: pd.DataFrame, planted, row_ids: np.ndarray, top: int | None = None
           ) -> float:
    """Share of planted errors found among the first ``top`` (default 2 × number planted)
    suspects: the face's row with the planted keypoint, or a whole-face suspect of that row."""
    top = suspects.head(2 * len(planted) if top is None else top)
    found = 0
    for pos, keypoint in planted:
        hits = top[top.row == row_ids[pos]]
        found += bool(len(hits)) and (keypoint == "" or keypoint in set(hits.keypoint)
                                      or "" in set(hits.keypoint))
    return found / len(planted)
