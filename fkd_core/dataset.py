"""Data sets as arrays: the training faces with their (partly missing) keypoints, the test faces.

``load(path)`` reads whatever Kaggle layout the user has (see :mod:`fkd_core.kaggle`) and
returns a :class:`KaggleData`; :func:`demo_path` gives the embedded demo set, written on
first use, so every code path is the same with or without the user's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import kaggle
from fkd_core.keypoints import (
    ALWAYS_PRESENT,
    COLUMN_NAMES,
    KEYPOINT_NAMES,
    N_KEYPOINTS,
    column_indices,
)

_ALWAYS = np.zeros(N_KEYPOINTS, bool)
_ALWAYS[[KEYPOINT_NAMES.index(n) for n in ALWAYS_PRESENT]] = True


@dataclass
class KeypointSet:
    """Training faces: images uint8 (N, 96, 96), keypoints float32 (N, 30) NaN=missing.

    ``row_ids`` are 0-based row numbers in training.csv (line = row id + 2), kept through
    subsets so every view can point back at the file.
    """

    images: np.ndarray
    keypoints: np.ndarray
    row_ids: np.ndarray
    source: str = ""
    fingerprint: str = ""

    def __post_init__(self):
        n = len(self.images)
        if self.images.shape != (n, 96, 96) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 96, 96), got {self.images.shape}")
        if self.keypoints.shape != (n, len(COLUMN_NAMES)):
            raise ValueError(f"keypoints must be (N, 30), got {self.keypoints.shape}")
        if self.row_ids.shape != (n,):
            raise ValueError(f"row_ids must be (N,), got {self.row_ids.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> np.ndarray:
        """Bool (N, 15): which keypoints each row labels (both x and y present)."""
        kp = self.keypoints.reshape(len(self), N_KEYPOINTS, 2)
        return np.isfinite(kp).all(axis=2)

    @property
    def complete(self) -> np.ndarray:
        """Rows labelling all 15 keypoints."""
        return self.labelled.all(axis=1)

    @property
    def four_point(self) -> np.ndarray:
        """Rows labelling exactly Kaggle's four always-present keypoints and nothing else."""
        return (self.labelled == _ALWAYS).all(axis=1)

    def subset(self, index) -> KeypointSet:
        index = np.asarray(index)
        return KeypointSet(
            self.images[index], self.keypoints[index], self.row_ids[index],
            self.source, self.fingerprint,
        )

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (train, validation) positions, stratified by complete vs. partial rows.

        Stratifying keeps the validation set's mix of 15- and 4-keypoint faces equal to the
        training set's, so per-keypoint validation errors are comparable across runs.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        train, val = [], []
        for stratum in (self.complete, ~self.complete):
            rows = np.flatnonzero(stratum)
            rows = rows[rng.permutation(len(rows))]
            n_val = int(round(len(rows) * val_fraction))
            val.append(rows[:n_val])
            train.append(rows[n_val:])
        return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))

    def rows_labelling(self, names) -> np.ndarray:
        """Positions of rows that label every one of the given keypoints."""
        cols = column_indices(names)
        return np.flatnonzero(np.isfinite(self.keypoints[:, cols]).all(axis=1))

    def summary(self) -> dict:
        lab = self.labelled
        kp = self.keypoints
        per_kp = {}
        for i, name in enumerate(KEYPOINT_NAMES):
            x, y = kp[lab[:, i], 2 * i], kp[lab[:, i], 2 * i + 1]
            per_kp[name] = {
                "labelled": int(lab[:, i].sum()),
                "x_range": [float(x.min()), float(x.max())] if len(x) else None,
                "y_range": [float(y.min()), float(y.max())] if len(y) else None,
            }
        from fkd_core.calibration import estimate_label_offset

        return {
            "rows": len(self),
            "complete_rows": int(self.complete.sum()),
            "four_point_rows": int(self.four_point.sum()),
            "label_x_offset": estimate_label_offset(self.images, self.keypoints),
            "keypoints": per_kp,
        }


@dataclass
class TestSet:
    image_ids: np.ndarray
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class KaggleData:
    """Everything found at a data path; parts the user does not have are None."""

    path: str
    train: KeypointSet | None = None
    test: TestSet | None = None
    lookup: pd.DataFrame | None = None
    sample_submission: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)

    def require_train(self) -> KeypointSet:
        if self.train is None:
            raise kaggle.KaggleFormatError(self.path, f"no {kaggle.TRAINING} found here")
        return self.train

    def summary(self) -> dict:
        out: dict = {"path": self.path, "files": self.files}
        if self.train is not None:
            out["training"] = self.train.summary()
        if self.test is not None:
            out["test_images"] = len(self.test)
        if self.lookup is not None:
            out["lookup_rows"] = len(self.lookup)
            out["lookup_images"] = int(self.lookup["ImageId"].nunique())
        if self.sample_submission is not None:
            out["sample_submission_rows"] = len(self.sample_submission)
        return out


def load(
    path: str | os.PathLike,
    *,
    parts=("training", "test", "lookup", "sample"),
    use_cache: bool = True,
    progress: kaggle.Progress | None = None,
) -> KaggleData:
    """Read the Kaggle files found at ``path`` (folder, per-file zips or competition archive)."""
    members = kaggle.locate(path)
    data = KaggleData(str(path), files={n: m.display for n, m in members.items()})
    if "training" in parts and kaggle.TRAINING in members:
        m = members[kaggle.TRAINING]
        arrays = kaggle.read_training(m, use_cache=use_cache, progress=progress)
        data.train = KeypointSet(
            arrays["images"], arrays["keypoints"], np.arange(len(arrays["images"])),
            m.display, m.content_key(),
        )
    if "test" in parts and kaggle.TEST in members:
        arrays = kaggle.read_test(members[kaggle.TEST], use_cache=use_cache, progress=progress)
        data.test = TestSet(arrays["image_ids"], arrays["images"])
    if "lookup" in parts and kaggle.LOOKUP in members:
        ids = data.test.image_ids if data.test is not None else None
        data.lookup = kaggle.read_lookup(members[kaggle.LOOKUP], ids)
    if "sample" in parts and kaggle.SAMPLE in members:
        data.sample_submission = kaggle.read_sample_submission(members[kaggle.SAMPLE])
    return data


def demo_path() -> Path:
    """The embedded demo set's folder: $FKD_DEMO_DIR, else <cache>/demo; written on first use."""
    folder = Path(os.environ.get("FKD_DEMO_DIR") or kaggle.cache_dir() / "demo")
    if not (folder / kaggle.TRAINING).is_file():
        from fkd_core import synthetic

        # Build the whole set beside its final place, then rename: never half a demo set.
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        synthetic.write_demo(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return folder
