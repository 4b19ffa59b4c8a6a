"""The process-wide store: data, runs and predictions, loaded once and shared by every session.

Panel runs ``app/main.py`` once per browser session, but this module is imported once per
server process, so everything here (a few hundred MB for Kaggle-size data) exists once no
matter how many tabs are open. Nothing here imports Panel or Bokeh: the benchmark and the
tests use the store directly.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import corrections, metrics, runs
from fkd_core.keypoints import KEYPOINT_NAMES
from fkd_core.photos import IMAGE_SUFFIXES

#: The grid's subsets, as the page names them.
SUBSETS = ("validation", "training", "all", "test")


_TF_IMPORT = threading.Lock()


def import_tensorflow() -> None:
    """Import TensorFlow and Keras, one thread at a time. Worker threads that import them at
    once (a session's predictions while the server warms up augmentation) can meet a
    partially initialised module — "cannot import name 'Optimizer' from partially
    initialized module 'keras.src.optimizers'" — and the run would be shown as broken.
    Every worker that may be the first to import them calls this first."""
    with _TF_IMPORT:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


class Unavailable(Exception):
    """Something a view cannot show, with a message meant for the page (never a traceback)."""


@dataclass(frozen=True)
class Settings:
    """Where the data and the runs are; ``data`` None means the embedded demo set."""

    data: str | None = None
    models: str = "models"
    corrections: str | None = None  # None: the data's log in the per-user fkd folder
    photos: str | None = None  # a folder whose photos the Photos tab offers by name

    @classmethod
    def from_args(cls, argv: list[str], environ=os.environ) -> Settings:
        """``--data``/``--models``/``--corrections``/``--photos`` (``panel serve app/ --args
        ...``), else the environment, else the defaults — the CLI's rule
        (:mod:`fkd_core.settings`)."""
        from fkd_core import settings

        parser = argparse.ArgumentParser(prog="app", add_help=False)
        parser.add_argument("--data")
        parser.add_argument("--models")
        parser.add_argument("--corrections")
        parser.add_argument("--photos")
        args, _ = parser.parse_known_args(argv)
        data = settings.data_path(args.data, environ)
        corrections = None if not args.corrections else str(Path(args.corrections).absolute())
        photos = None if not args.photos else str(Path(args.photos).absolute())
        return cls(None if data is None else str(data),
                   str(settings.models_dir(args.models, environ)), corrections, photos)


def train_command(settings: Settings, data_path: str) -> str:
    """The exact command that makes a first run for this server's data and models folder."""
    parts = ["fkd", "train", "--data", data_path, "--epochs", "5"]
    if Path(settings.models) != Path("models"):
        parts += ["--models", settings.models]
    return shlex.join(parts)


class Store:
    """Data, run list, whole-data predictions and per-face errors for one (data, models) pair.

    Every method is safe to call from several sessions' threads at once; a run's predictions
    are computed by one thread while the others wait for them.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models_dir = Path(settings.models)
        self.data = None
        self.data_error: str | None = None
        self.data_path = settings.data or ""
        self._lock = threading.Lock()
        self._run_locks: dict[str, threading.Lock] = {}
        self._runs: list[runs.Run] = []
        self._runs_stamp: object = None
        self._photos: dict[str, Path] = {}
        self._photos_stamp: object = None
        self._predictions: dict[str, dict[str, np.ndarray]] = {}
        self._prediction_errors: dict[str, str] = {}
        self._errors: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._images_key = ""
        self._models: dict[str, object] = {}
        self._model_errors: dict[str, str] = {}
        self._audits: dict[str, object] = {}
        self._costs: dict[str, object] = {}
        self._cost_errors: dict[str, str] = {}
        self._measuring = threading.Lock()  # one inference timing at a time per process
        self._label_offset: float | None = None
        self._labels_lock = threading.Lock()  # one writer of the log per process at a time
        self._labels: LabelState | None = None
        self._suspects: dict[str | None, tuple[LabelState, pd.DataFrame]] = {}
        self._suspect_errors: dict[tuple[str | None, object], str] = {}
        self.mean_face: np.ndarray | None = None
        self._load_data()

    # -- data ---------------------------------------------------------------------------

    def _load_data(self) -> None:
        from fkd_core import dataset
        from fkd_core.kaggle import KaggleFormatError

        try:
            path = self.settings.data or str(dataset.demo_path())
            self.data_path = path
            data = dataset.load(path, parts=("training", "test"))
            if data.train is None and data.test is None:
                raise KaggleFormatError(path, "no training.csv or test.csv found here")
        except (KaggleFormatError, OSError) as exc:
            self.data_error = str(exc)
            return
        self.data = data
        if data.train is not None and len(data.train):
            self.mean_face = data.train.images.mean(axis=0, dtype=np.float32)

    @property
    def train(self):
        return None if self.data is None else self.data.train

    @property
    def test(self):
        return None if self.data is None else self.data.test

    def _parts(self) -> dict[str, np.ndarray]:
        parts = {}
        if self.train is not None:
            parts["train"] = self.train.images
        if self.test is not None:
            parts["test"] = self.test.images
        return parts

    # -- runs ---------------------------------------------------------------------------

    def runs(self) -> list[runs.Run]:
        """Every run folder (broken ones too), re-read only when the models folder changed."""
        try:
            stamp = self.models_dir.stat().st_mtime_ns
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._runs_stamp or stamp is None:
                self._runs = runs.list_runs(self.models_dir)
                self._runs_stamp = stamp
            return list(self._runs)

    def ok_runs(self) -> list[runs.Run]:
        """Usable runs, best validation RMSE first."""
        found = [r for r in self.runs() if r.ok]
        return sorted(found, key=lambda r: (r.val_rmse is None, r.val_rmse or 0.0, r.id))

    def run(self, run_id: str) -> runs.Run:
        """A usable run by id. Ids come from :meth:`ok_runs`, never a path typed in a page."""
        for r in self.ok_runs():
            if r.id == run_id:
                return r
        raise Unavailable(f"run {run_id!r} is not (or no longer) in {self.models_dir}")

    def trained_here(self, run: runs.Run) -> bool:
        """Whether the run was trained on this server's training data (so its split is known)."""
        fingerprint = run.config.get("data", {}).get("fingerprint")
        return self.train is not None and fingerprint == self.train.fingerprint

    def train_command(self) -> str:
        return train_command(self.settings, self.data_path)

    # -- the photos folder --------------------------------------------------------------

    def photo_files(self) -> dict[str, Path]:
        """The image files directly in ``--photos`` (name → path; none without the option),
        re-listed when the folder changes. A page chooses a name from this listing and the
        path comes from here: nothing a browser sends ever becomes a path. Sub-folders,
        hidden files and links are left out. An unreadable folder raises
        :class:`Unavailable`."""
        folder = self.settings.photos
        if folder is None:
            return {}
        try:
            stamp = os.stat(folder).st_mtime_ns
            with self._lock:
                if self._photos_stamp == stamp:
                    return dict(self._photos)
            with os.scandir(folder) as entries:
                found = {e.name: Path(e.path) for e in entries
                         if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
                         and Path(e.name).suffix.lower() in IMAGE_SUFFIXES}
        except OSError as exc:
            raise Unavailable(f"the photos folder {folder} cannot be read: "
                              f"{exc.strerror or exc}") from None
        with self._lock:
            self._photos, self._photos_stamp = dict(sorted(found.items())), stamp
            return dict(self._photos)

    # -- predictions --------------------------------------------------------------------

    def predictions_ready(self, run_id: str) -> bool:
        return run_id in self._predictions or run_id in self._prediction_errors

    def predictions(self, run_id: str) -> dict[str, np.ndarray]:
        """Whole-data predictions ({'train', 'test'}: (N, 30) px), from the run folder's cache
        or computed once; raises :class:`Unavailable` with the reason if the model won't load."""
        if run_id in self._predictions:
            return self._predictions[run_id]
        if self.data is None:
            raise Unavailable("no data is loaded")
        run = self.run(run_id)
        with self._lock:  # the pixels are hashed once per process, not once per run
            if not self._images_key:
                self._images_key = runs.images_key(self._parts())
        return self._load_once(
            f"predictions:{run_id}", run_id, self._predictions, self._prediction_errors,
            lambda: runs.cached_predictions(run, self._parts(), key=self._images_key),
        )

    # -- models, flip audits, the data's label offset -------------------------------------

    def _run_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._run_locks.setdefault(key, threading.Lock())

    def _load_once(self, lock_key: str, run_id: str, done: dict, errors: dict, load):
        """``load()`` once per run and process; a failure is kept as the page's message."""
        with self._run_lock(lock_key):
            if run_id in done:
                return done[run_id]
            if run_id in errors:
                raise Unavailable(errors[run_id])
            try:
                import_tensorflow()
                done[run_id] = load()
            except Exception as exc:  # any load failure becomes a message in the page
                message = f"run {run_id} could not be loaded: {type(exc).__name__}: {exc}"
                errors[run_id] = message.splitlines()[0][:400]
                raise Unavailable(errors[run_id]) from None
            return done[run_id]

    def model_ready(self, run_id: str) -> bool:
        return run_id in self._models or run_id in self._model_errors

    def model(self, run_id: str):
        """The run's Keras model, loaded once per process and kept: the activation view's
        cached sub-models (:func:`fkd_core.activations.submodel`) live as long as it does."""
        if run_id in self._models:
            return self._models[run_id]
        run = self.run(run_id)
        return self._load_once(f"model:{run_id}", run_id, self._models, self._model_errors,
                               run.load_model)

    def audit_ready(self, run_id: str) -> bool:
        return run_id in self._audits

    def flip_audit(self, run_id: str):
        """The run's flip audit of every complete training row (computed once per process)."""
        if run_id in self._audits:
            return self._audits[run_id]
        if self.train is None or not len(self.train):
            raise Unavailable(self.data_error or "this data has no training.csv")
        from fkd_core.audit import flip_audit

        run = self.run(run_id)
        with self._run_lock(f"audit:{run_id}"):
            if run_id not in self._audits:
                model = self.model(run_id)
                self._audits[run_id] = flip_audit(model, self.train.images, self.train.keypoints,
                                                  label_offset=run.label_offset)
            return self._audits[run_id]

    def cost_ready(self, run_id: str) -> bool:
        return run_id in self._costs or run_id in self._cost_errors

    def inference_cost(self, run_id: str):
        """The run's :class:`fkd_core.experiments.Cost` on this machine: from its run folder,
        else measured once (one timing at a time per process, so timings never overlap) on
        the first training faces; raises :class:`Unavailable` with the reason."""
        from fkd_core import experiments

        if run_id in self._costs:
            return self._costs[run_id]
        run = self.run(run_id)
        with self._run_lock(f"cost:{run_id}"):
            if run_id in self._costs:
                return self._costs[run_id]
            if run_id in self._cost_errors:
                raise Unavailable(self._cost_errors[run_id])
            cost = experiments.read_cost(run.path)
            if cost is None:
                try:
                    model = self.model(run_id)
                    with self._measuring:
                        cost = experiments.cached_cost(run, self._cost_images(), model=model)
                except Unavailable as exc:
                    self._cost_errors[run_id] = str(exc)
                    raise
                except Exception as exc:  # a model that fails to predict: the run's message
                    message = f"run {run_id} could not be timed: {type(exc).__name__}: {exc}"
                    self._cost_errors[run_id] = message.splitlines()[0][:400]
                    raise Unavailable(self._cost_errors[run_id]) from None
            self._costs[run_id] = cost
            return cost

    def _cost_images(self) -> np.ndarray:
        """The faces inference is timed on: the first training (else test) faces, else
        grey ones (the time does not depend on the pixels)."""
        from fkd_core.experiments import COST_BATCH

        for part in (self.train, self.test):
            if part is not None and len(part):
                images = part.images[:COST_BATCH]
                return np.resize(images, (COST_BATCH, *images.shape[1:]))
        return np.full((COST_BATCH, 96, 96), 128, np.uint8)

    def label_offset(self) -> float:
        """The training labels' x offset, estimated exactly as ``fkd train`` does, so previews
        move the labels into the pixel-index convention the augmentation code works in."""
        if self._label_offset is None:
            from fkd_core.calibration import estimate_label_offset

            train = self.train
            self._label_offset = 0.0 if train is None or not len(train) else (
                estimate_label_offset(train.images, train.keypoints))
        return self._label_offset

    # -- label corrections and suspects --------------------------------------------------

    def corrections_path(self) -> Path | None:
        """The corrections log: ``--corrections``, else the data's log in the per-user fkd
        folder (:func:`fkd_core.corrections.default_path`, as ``fkd labels`` finds it)."""
        if self.settings.corrections:
            return Path(self.settings.corrections)
        if self.train is None:
            return None
        return corrections.default_path(self.train.fingerprint)

    def labels(self) -> LabelState:
        """The training labels with the log applied; re-read only when the log's file changed
        (so another session's or the CLI's corrections show after a reload)."""
        state = self._labels
        if state is not None and state.stamp == _stamp(self.corrections_path()):
            return state
        with self._labels_lock:
            return self._read_labels()

    def _read_labels(self) -> LabelState:
        """Caller holds ``_labels_lock``."""
        path = self.corrections_path()
        stamp = _stamp(path)
        if self._labels is not None and self._labels.stamp == stamp:
            return self._labels
        train = self.train
        if train is None or path is None:
            self._labels = LabelState(path, stamp, np.zeros((0, 2 * len(KEYPOINT_NAMES))),
                                      np.zeros((0, 2 * len(KEYPOINT_NAMES))), np.zeros(0, int),
                                      [], self.data_error or "this data has no training.csv")
            return self._labels
        try:
            entries = corrections.read(path)  # once: the lines shown are the lines applied
            keypoints = corrections.replay(train.keypoints, train.row_ids, entries, path,
                                           train.fingerprint)
            error = None
        except corrections.CorrectionsError as exc:
            keypoints, entries, error = train.keypoints, [], str(exc)
        self._labels = LabelState(path, stamp, keypoints, train.keypoints, train.row_ids,
                                  entries, error)
        return self._labels

    def correct(self, changes: list[tuple[int, str, tuple[float, float]]], reason: str,
                note: str = "") -> list[corrections.Correction]:
        """Append one correction per (row, keypoint, new x/y) that changes something; each
        line's "before" is read under this process's lock, right before the append, so two
        sessions correcting the same point never write a "before" the log contradicts.
        Returns the lines written."""
        with self._labels_lock:
            state = self._read_labels()
            if state.error:
                raise Unavailable(f"corrections are not saved while the log is broken: "
                                  f"{state.error}")
            lines = []
            for row, keypoint, new in changes:
                old = state.point(row, keypoint)
                new = (float(new[0]), float(new[1]))
                if not all(np.isfinite(new)):
                    new = (np.nan, np.nan)
                if np.allclose(old, new, atol=1e-3, equal_nan=True):
                    continue
                lines.append(corrections.Correction(row, keypoint, old, new, reason,
                                                    note[:500]))
            if not lines:
                return []
            try:
                corrections.append(state.path, lines, self.train.fingerprint)
            except OSError as exc:
                raise Unavailable(f"could not write the corrections log {state.path}: "
                                  f"{exc.strerror or exc}") from None
            self._read_labels()
            return lines

    def suspects(self, run_id: str | None) -> pd.DataFrame:
        """:func:`fkd_core.label_qa.find_suspects` on the corrected labels, with this run's
        (in-sample) predictions for residuals and swaps, or none; computed once per run and
        log state, shared by every session (a DataFrame the views never modify)."""
        from fkd_core import label_qa

        state = self.labels()
        cached = self._suspects.get(run_id)
        if cached is not None and cached[0].stamp == state.stamp:
            return cached[1]
        with self._run_lock(f"suspects:{run_id}"):
            state = self.labels()
            cached = self._suspects.get(run_id)
            if cached is not None and cached[0].stamp == state.stamp:
                return cached[1]
            try:
                if state.error:
                    raise Unavailable(state.error)
                pred = None if run_id is None else self.predictions(run_id)["train"]
                train = self.train
                found = label_qa.find_suspects(train.images, state.keypoints, train.row_ids,
                                               pred)
            except Unavailable as exc:
                self._suspect_errors[run_id] = str(exc)
                raise
            self._suspect_errors.pop(run_id, None)
            self._suspects[run_id] = (state, found)
            return found

    def latest_suspects(self, run_id: str | None
                        ) -> tuple[pd.DataFrame | None, LabelState | None, str | None]:
        """(the suspects last computed for this run, whatever the log's state since, or None;
        the labels they judged; the reason they could not be computed, or None) — never
        computes."""
        cached = self._suspects.get(run_id)
        if cached is None:
            return None, None, self._suspect_errors.get(run_id)
        return cached[1], cached[0], self._suspect_errors.get(run_id)

    def suspects_current(self, run_id: str | None) -> bool:
        cached = self._suspects.get(run_id)
        return cached is not None and cached[0].stamp == self.labels().stamp

    # -- subsets and errors -------------------------------------------------------------

    def subsets(self, run_id: str) -> list[str]:
        """The grid subsets this run can show on this data."""
        out = []
        if self.train is not None:
            if self.trained_here(self.run(run_id)):
                out += ["validation", "training"]
            out.append("all")
        if self.test is not None and len(self.test):
            out.append("test")
        return out

    def rows(self, run_id: str, subset: str) -> np.ndarray:
        """Positions (into the training or test arrays) of a subset's faces, in file order."""
        if subset == "test":
            if self.test is None:
                raise Unavailable("this data has no test.csv")
            return np.arange(len(self.test))
        if self.train is None:
            raise Unavailable("this data has no training.csv")
        if subset == "all":
            return np.arange(len(self.train))
        from fkd_core.evaluation import evaluation_rows

        run = self.run(run_id)
        if not self.trained_here(run):
            raise Unavailable(
                f"run {run_id} was trained on other data, so its validation and training "
                "faces are unknown here — choose 'all'"
            )
        return evaluation_rows(run, self.train, "val" if subset == "validation" else "train")

    def errors(self, run_id: str, subset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, per-image RMSE (n,), per-keypoint distance (n, 15)) of a labelled subset."""
        key = (run_id, subset)
        if key not in self._errors:
            rows = self.rows(run_id, subset)
            if subset == "test":
                nan = np.full(len(rows), np.nan)
                self._errors[key] = rows, nan, np.full((len(rows), len(KEYPOINT_NAMES)), np.nan)
            else:
                pred = self.predictions(run_id)["train"][rows]
                truth = self.train.keypoints[rows]
                self._errors[key] = (
                    rows,
                    metrics.per_image_rmse(pred, truth),
                    metrics.per_keypoint_distance(pred, truth),
                )
        return self._errors[key]


@dataclass(frozen=True)
class LabelState:
    """The training labels as corrected by the log at one moment (``stamp``)."""

    path: Path | None
    stamp: object
    keypoints: np.ndarray  # (N, 30) corrected
    original: np.ndarray  # (N, 30) as in training.csv
    row_ids: np.ndarray
    entries: list
    error: str | None  # the log cannot be applied: why (labels are then the original)

    @property
    def count(self) -> int:
        return len(self.entries)

    def position(self, row: int) -> int:
        found = np.flatnonzero(self.row_ids == row)
        if not len(found):
            raise Unavailable(f"row {row} is not in the training data")
        return int(found[0])

    def point(self, row: int, keypoint: str) -> tuple[float, float]:
        k = KEYPOINT_NAMES.index(keypoint)
        x, y = self.keypoints[self.position(row), 2 * k:2 * k + 2]
        return float(x), float(y)

    @functools.cached_property
    def corrected_rows(self) -> frozenset[int]:
        """Rows whose labels now differ from training.csv (an undone correction does not
        count)."""
        return _corrected_rows(self)


def _corrected_rows(state: LabelState) -> frozenset[int]:
    if not state.entries:
        return frozenset()
    a, b = state.keypoints, state.original
    same = (np.abs(a - b) <= 1e-3) | (np.isnan(a) & np.isnan(b))
    return frozenset(int(r) for r in state.row_ids[~same.all(axis=1)])


def _stamp(path: Path | None) -> object:
    """What changes when the file does (its size and time), or None if there is none."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


_STORES: dict[Settings, Store] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings: Settings) -> Store:
    """The one store of this process for these settings (built by the first session)."""
    with _STORES_LOCK:
        if settings not in _STORES:
            _STORES[settings] = Store(settings)
        return _STORES[settings]
