"""Evaluating a run on labelled faces and writing Kaggle submissions from its predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import kaggle, metrics
from fkd_core.dataset import KaggleData, KeypointSet
from fkd_core.keypoints import ALWAYS_PRESENT, COLUMN_NAMES, KEYPOINT_NAMES, clip_to_frame
from fkd_core.runs import Run


@dataclass
class Evaluation:
    subset: str
    row_ids: np.ndarray
    pred: np.ndarray
    truth: np.ndarray

    @property
    def rmse(self) -> float:
        return metrics.rmse(self.pred, self.truth)

    @property
    def per_keypoint(self) -> pd.Series:
        return pd.Series(metrics.per_keypoint_rmse(self.pred, self.truth), index=KEYPOINT_NAMES)

    def per_image(self) -> pd.DataFrame:
        """One row per face: its training.csv row, RMSE and labelled count, worst first."""
        err = metrics.per_image_rmse(self.pred, self.truth)
        frame = pd.DataFrame({
            "row": self.row_ids,
            "line": self.row_ids + 2,
            "rmse": err,
            "labelled": np.isfinite(self.truth).sum(axis=1) // 2,
        })
        return frame.sort_values("rmse", ascending=False, na_position="last")


SUBSETS = ("val", "holdout", "train", "all")


def evaluation_rows(run: Run, data: KeypointSet, subset: str) -> np.ndarray:
    """Positions to evaluate: the run's validation or hold-out rows, all rows, or the rest
    (training).

    Validation and hold-out rows come from the run's own ``val_predictions.npz`` — exact
    for single, specialist and ensemble runs alike — and are only meaningful on the data the
    run was trained on, which the data fingerprint checks.
    """
    if subset == "all":
        return np.arange(len(data))
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
    trained_on = run.config.get("data", {})
    if trained_on.get("fingerprint") != data.fingerprint:
        raise ValueError(
            f"run {run.id} was trained on other data ({trained_on.get('source')}); "
            f"its {subset} rows are unknown here — use --subset all"
        )
    saved = run.val_predictions
    val = np.isin(data.row_ids, saved["row_ids"])
    held = np.isin(data.row_ids, saved.get("holdout_row_ids", np.zeros(0, np.int64)))
    if subset == "holdout" and not held.any():
        raise ValueError(f"run {run.id} has no hold-out rows (train with --holdout-fraction)")
    return np.flatnonzero({"val": val, "holdout": held, "train": ~(val | held)}[subset])


def evaluate(run: Run, data: KeypointSet, *, subset: str = "val", tta: bool = False,
             model=None) -> Evaluation:
    rows = evaluation_rows(run, data, subset)
    pred = run.predict(data.images[rows], tta=tta, model=model)
    if run.source_offset.any():  # four-keypoint rows follow their own source's convention
        pred[data.four_point[rows]] += np.tile(run.source_offset, len(KEYPOINT_NAMES))
    return Evaluation(subset, data.row_ids[rows], pred, data.keypoints[rows])


def validation_bias(run: Run, *, tta: bool = True) -> np.ndarray:
    """The run's mean error per coordinate (30 values, pixels) on its own validation rows,
    from its ``val_predictions.npz`` (nothing from the test set); 0 where no row is labelled."""
    val = run.val_predictions
    error = val["pred_tta" if tta and "pred_tta" in val else "pred"] - val["truth"]
    labelled = np.isfinite(error).any(axis=0)
    bias = np.zeros(error.shape[1])
    bias[labelled] = np.nanmean(error[:, labelled], axis=0)
    return bias


def _debiased_prediction(run: Run, images: np.ndarray, tta: bool) -> np.ndarray:
    """Predictions minus the validation bias: an ensemble's as the weighted mean of its
    members' each debiased by its own (the ensemble's validation rows overlap its members'
    training rows, so its own mean error is not one to trust)."""
    if run.kind != "ensemble":
        return run.predict(images, tta=tta) - validation_bias(run, tta=tta)
    from fkd_core import runs

    total = 0.0
    for member_id, weight in zip(run.config["members"], run.config["weights"]):
        member = runs.resolve(run.path.parent / member_id)
        total = total + weight * _debiased_prediction(member, images, tta)
    return np.asarray(total)


def submission(run: Run, data: KaggleData, *, tta: bool = True, model=None,
               debias: bool = False) -> pd.DataFrame:
    """Kaggle's ``RowId,Location`` for every row of IdLookupTable.csv, in its order.

    Locations are clipped to the image's frame in the data set's convention
    (:func:`fkd_core.keypoints.clip_to_frame`). ``debias``: minus each model's mean error on
    its own validation rows (:func:`validation_bias`; an ensemble's members each their own).
    """
    if data.test is None or data.lookup is None:
        raise kaggle.KaggleFormatError(
            data.path, f"a submission needs {kaggle.TEST} and {kaggle.LOOKUP}"
        )
    if debias:
        pred = _debiased_prediction(run, data.test.images, tta)
    else:
        pred = run.predict(data.test.images, tta=tta, model=model)
    offset = run.source_offset
    if offset.any():  # images asked for only the 8 always-present values: that convention
        asked = data.lookup.groupby("ImageId").FeatureName.nunique()
        four = np.isin(data.test.image_ids, asked.index[asked == 2 * len(ALWAYS_PRESENT)])
        pred[four] += np.tile(offset, len(KEYPOINT_NAMES))
    pred = clip_to_frame(pred, run.label_offset)
    position = pd.Series(np.arange(len(data.test)), index=data.test.image_ids)
    rows = position.loc[data.lookup.ImageId.to_numpy()].to_numpy()
    cols = pd.Series(np.arange(len(COLUMN_NAMES)), index=COLUMN_NAMES)
    columns = cols.loc[data.lookup.FeatureName.to_numpy()].to_numpy()
    return pd.DataFrame({"RowId": data.lookup.RowId.to_numpy(), "Location": pred[rows, columns]})


def write_submission(frame: pd.DataFrame, path: str | Path) -> None:
    kaggle.write_submission_csv(path, frame.RowId.to_numpy(), frame.Location.to_numpy())
