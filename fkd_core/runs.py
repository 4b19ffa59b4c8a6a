"""The runs registry: run folders under ``models/``, read without ever crashing, made safely.

Every run — a single model, combined specialists or an ensemble — holds one ``model.keras``
(composites are one Keras graph of their members), ``config.json``, ``metrics.json`` and
``val_predictions.npz``. A folder that is missing any of these, or whose files break the
schema (:mod:`fkd_core.run_schema`), is listed as broken with the reason.

Runs are made by :func:`staged_run`: in a hidden staging folder of this process's own
(``.incomplete-<id>-<random>``), under an exclusive lock on the id, renamed into place only
when complete and never over an existing run. Staging folders left by killed processes are
listed by :func:`stale_staging` and removed by :func:`clean_stale`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fkd_core.run_schema import RunFileError, check_config, check_metrics, validate_run_id

REQUIRED = ("model.keras", "config.json", "metrics.json", "val_predictions.npz")
STAGING_PREFIX = ".incomplete-"
_LOCKS = ".locks"
_OWNER = ".owner.json"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Keras's own top-level model classes; anything else in a .keras file is not a saved model.
_MODEL_CLASSES = ("Functional", "Sequential", "Model")


class RunError(ValueError):
    """A run that cannot be used: the message names the run and the reason."""


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def kind(self) -> str:
        return self.config.get("kind", "single")

    @property
    def arch(self) -> str:
        train = self.config.get("train") or {}
        return self.config.get("arch") or train.get("arch", "?")

    @property
    def label_offset(self) -> float:
        """The x offset of its data set's labels that the run was trained with."""
        value = self.config.get("label_offset")
        if value is None:
            value = (self.config.get("train") or {}).get("label_offset")
        return float(value or 0.0)

    @property
    def source_offset(self) -> np.ndarray:
        """(dx, dy) pixels to add for faces labelled by the four-keypoint rows' convention
        (learned with ``fkd train --source-offset learn``; zero otherwise)."""
        value = self.config.get("source_offset") or {}
        return np.array([value.get("dx", 0.0), value.get("dy", 0.0)], np.float32)

    def predict(self, images: np.ndarray, *, tta: bool = False, model=None) -> np.ndarray:
        """Keypoints in pixels (the data set's convention) for uint8 faces (N, 96, 96).

        A model that answers NaN or infinity is broken, never scored: :class:`RunError`.
        """
        from fkd_core.predict import predict_keypoints

        model = model if model is not None else self.load_model()
        pred = predict_keypoints(model, images, tta=tta, label_offset=self.label_offset)
        bad = ~np.isfinite(pred).all(axis=1)
        if bad.any():
            raise RunError(f"run {self.id} is broken: its model predicts NaN or infinity for "
                           f"{int(bad.sum())} of {len(pred)} faces")
        return pred

    @property
    def val_rmse(self) -> float | None:
        return self.metrics.get("val_rmse")

    def load_model(self):
        """The run's Keras model, loaded with ``safe_mode=True`` (no arbitrary code).

        Any failure — a bogus graph, missing or mismatched weights, a layer Keras refuses in
        safe mode — is a :class:`RunError` naming the run, never a library's own exception.
        """
        import keras

        import fkd_core.architectures  # noqa: F401  (registers custom layers)
        import fkd_core.composite  # noqa: F401
        import fkd_core.losses  # noqa: F401

        try:
            return keras.models.load_model(self.path / "model.keras", safe_mode=True,
                                           compile=False)
        except Exception as exc:  # noqa: BLE001 — every load failure is the run's fault
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise RunError(f"run {self.id} is broken: model.keras does not load ({reason})") \
                from None

    @cached_property
    def val_predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "val_predictions.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _check_model_file(path: Path) -> None:
    """Structural check of a .keras file without TensorFlow: a zip holding a Keras model
    graph (a JSON object naming a Keras model class) and HDF5 weights."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "config.json" not in names:
            raise ValueError("model.keras has no config.json inside")
        weights = [n for n in names if n.endswith(".weights.h5")]
        if not weights:
            raise ValueError("model.keras holds no weights")
        graph = json.loads(zf.read("config.json"))
        if not isinstance(graph, dict) or graph.get("class_name") not in _MODEL_CLASSES \
                or not isinstance(graph.get("config"), dict):
            raise ValueError("model.keras's config.json is not a saved Keras model")
        with zf.open(weights[0]) as f:
            if f.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                raise ValueError(f"model.keras's {weights[0]} is not an HDF5 file")
        bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"model.keras member {bad} is corrupt")


def read_run(path: str | os.PathLike) -> Run:
    """Read one run folder; problems become ``Run.error``, never an exception."""
    path = Path(path)
    run = Run(path)
    missing = [n for n in REQUIRED if not (path / n).is_file()]
    if missing:
        run.error = f"missing {', '.join(missing)}"
        return run
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        run.config, run.metrics = check_config(config), check_metrics(metrics)
    except (OSError, ValueError) as exc:  # RunFileError and JSON/Unicode errors included
        run.config, run.metrics = {}, {}
        run.error = f"unreadable config.json or metrics.json: {exc}"
        return run
    try:
        _check_model_file(path / "model.keras")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        run.error = f"model.keras is not a valid Keras file: {exc}"
        return run
    try:
        np.load(path / "val_predictions.npz", allow_pickle=False).close()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        run.error = f"val_predictions.npz is unreadable: {exc}"
    return run


def list_runs(models_dir: str | os.PathLike = "models") -> list[Run]:
    """All run folders (broken ones included, with their reason), newest first.

    Hidden and ``_`` folders (staging, locks) are not runs; see :func:`stale_staging`.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    runs = [
        read_run(p) for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_"))
    ]
    return sorted(runs, key=lambda r: r.id, reverse=True)


def resolve(run: str | os.PathLike, models_dir: str | os.PathLike = "models") -> Run:
    """A usable run by folder path or by id under ``models_dir``; :class:`RunError` if not.

    Anything that is not an existing folder must be a valid run id, so a typed id never
    walks out of the models folder.
    """
    path = Path(run)
    if not path.is_dir():
        try:
            path = Path(models_dir) / validate_run_id(str(run))
        except RunFileError as exc:
            raise RunError(str(exc)) from None
    if not path.is_dir():
        known = ", ".join(r.id for r in list_runs(models_dir)[:10]) or "none"
        raise RunError(f"no run {run!r} (looked in {models_dir}; runs there: {known})")
    found = read_run(path)
    if found.error:
        raise RunError(f"run {found.id} is broken: {found.error}")
    return found


# -- making run folders ----------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM → KeyboardInterrupt, so a killed run cleans up like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _lock_path(models_dir: Path, run_id: str) -> Path:
    return models_dir / _LOCKS / f"{run_id}.lock"


@contextlib.contextmanager
def _id_lock(models_dir: Path, run_id: str):
    """Hold an exclusive lock on a run id for as long as a process makes that run."""
    path = _lock_path(models_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"run {run_id} is being made by another process right now") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _id_locked(models_dir: Path, run_id: str) -> bool:
    """Whether a live process holds the lock of ``run_id``."""
    path = _lock_path(models_dir, run_id)
    if not path.is_file():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def staged_run(models_dir: str | os.PathLike, run_id: str):
    """Yield a staging folder of this process's own; rename it to ``models_dir/run_id`` only
    on success and never over an existing run. On any failure the staging folder — the only
    thing this removes — is deleted."""
    models_dir = Path(models_dir)
    validate_run_id(run_id)
    final = models_dir / run_id
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"run {final} already exists")
    models_dir.mkdir(parents=True, exist_ok=True)
    with _id_lock(models_dir, run_id):
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{run_id}-", dir=models_dir))
        (staging / _OWNER).write_text(json.dumps(
            {"run_id": run_id, "pid": os.getpid(), "started": time.time()}))
        try:
            with _sigterm_as_interrupt():
                yield staging
                (staging / _OWNER).unlink()
                if final.exists() or final.is_symlink():
                    raise FileExistsError(f"run {final} appeared while this one was made")
                os.rename(staging, final)  # fails on a non-empty folder: never overwrites
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@dataclass
class Staging:
    """A staging folder left behind (by a killed process) or still being written."""

    path: Path
    run_id: str
    age_seconds: float
    live: bool


def stale_staging(models_dir: str | os.PathLike = "models", *, include_live: bool = False
                  ) -> list[Staging]:
    """Staging folders under ``models_dir`` whose process is gone (with ``include_live``,
    also those still being written), oldest first."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = []
    for p in models_dir.iterdir():
        if not p.name.startswith(STAGING_PREFIX) or p.is_symlink() or not p.is_dir():
            continue
        run_id = p.name[len(STAGING_PREFIX):]
        try:
            owner = json.loads((p / _OWNER).read_text())
            run_id = validate_run_id(owner["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a staging folder of an older fkd, or one whose owner note is gone
        live = _id_locked(models_dir, run_id)
        if live and not include_live:
            continue
        try:
            age = time.time() - p.stat().st_mtime
        except OSError:
            continue
        found.append(Staging(p, run_id, age, live))
    return sorted(found, key=lambda s: -s.age_seconds)


def clean_stale(models_dir: str | os.PathLike = "models") -> list[Staging]:
    """Delete the staging folders no live process is writing; returns what was removed."""
    removed = []
    for s in stale_staging(models_dir):
        shutil.rmtree(s.path, ignore_errors=True)
        if not s.path.exists():
            removed.append(s)
    return removed


def images_key(parts: dict[str, np.ndarray]) -> str:
    """A short digest of named image arrays: names the predictions file of exactly these images.

    Hashing the pixels (not a path or a file's mtime) means a renamed or re-zipped data set
    reuses its predictions and an edited one never gets stale ones.
    """
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name in sorted(parts):
        images = np.ascontiguousarray(parts[name])
        h.update(f"{name}:{images.dtype}:{images.shape};".encode())
        h.update(memoryview(images).cast("B"))
    return h.hexdigest()


def cached_predictions(run: Run, parts: dict[str, np.ndarray], *, model=None,
                       key: str | None = None) -> dict:
    """Plain predictions (pixels, (N, 30) per part) of a run on named image arrays.

    Computed once and kept in the run folder as ``predictions-<images_key>.npz`` (written to
    a temporary file, then renamed, so a reader never sees half a file), so a dashboard
    restart does not run the model again. A missing, stale or unreadable cache file is
    recomputed; a read-only run folder just keeps them in memory. ``key`` is
    ``images_key(parts)`` when the caller already has it (hashing the pixels is not free).
    """
    import tempfile

    path = run.path / f"predictions-{key or images_key(parts)}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            found = {name: z[name] for name in parts}
        if all(found[n].shape == (len(parts[n]), 30) for n in parts):
            return found
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    model = model if model is not None else run.load_model()
    found = {name: run.predict(images, model=model) for name, images in parts.items()}
    try:
        fd, tmp = tempfile.mkstemp(dir=run.path, prefix=".predictions-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **found)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
    return found
