"""The runs registry: finished run folders under ``models/``, read without ever crashing.

Every run — a single model, combined specialists or an ensemble — holds one ``model.keras``
(composites are one Keras graph of their members), ``config.json``, ``metrics.json`` and
``val_predictions.npz``. A folder that is missing any of these, or whose files do not parse,
is listed as broken with the reason. Hidden folders (``.incomplete-*``) are runs in progress
or killed ones and are never listed.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

REQUIRED = ("model.keras", "config.json", "metrics.json", "val_predictions.npz")


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
        train = self.config.get("train", {})
        return self.config.get("arch") or train.get("arch", "?")

    @property
    def label_offset(self) -> float:
        """The x offset of its data set's labels that the run was trained with."""
        return float(self.config.get("label_offset", self.config.get("train", {}).get(
            "label_offset") or 0.0))

    def predict(self, images: np.ndarray, *, tta: bool = False, model=None) -> np.ndarray:
        """Keypoints in pixels (the data set's convention) for uint8 faces (N, 96, 96)."""
        from fkd_core.predict import predict_keypoints

        model = model if model is not None else self.load_model()
        return predict_keypoints(model, images, tta=tta, label_offset=self.label_offset)

    @property
    def val_rmse(self) -> float | None:
        return self.metrics.get("val_rmse")

    def load_model(self):
        """The run's Keras model, loaded with ``safe_mode=True`` (no arbitrary code)."""
        import keras

        import fkd_core.architectures  # noqa: F401  (registers custom layers)
        import fkd_core.composite  # noqa: F401
        import fkd_core.losses  # noqa: F401

        return keras.models.load_model(self.path / "model.keras", safe_mode=True, compile=False)

    @cached_property
    def val_predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "val_predictions.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _check_model_file(path: Path) -> None:
    """Cheap structural check of a .keras file (a zip with config.json and weights)."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "config.json" not in names:
            raise ValueError("model.keras has no config.json inside")
        if not any(n.endswith(".weights.h5") for n in names):
            raise ValueError("model.keras holds no weights")
        json.loads(zf.read("config.json"))
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
        run.config = json.loads((path / "config.json").read_text())
        run.metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        run.error = f"unreadable config.json or metrics.json: {exc}"
        return run
    try:
        _check_model_file(path / "model.keras")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        run.error = f"model.keras is not a valid Keras file: {exc}"
        return run
    try:
        np.load(path / "val_predictions.npz", allow_pickle=False).close()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        run.error = f"val_predictions.npz is unreadable: {exc}"
    return run


def list_runs(models_dir: str | os.PathLike = "models") -> list[Run]:
    """All run folders (broken ones included, with their reason), newest first."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    runs = [
        read_run(p) for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_"))
    ]
    return sorted(runs, key=lambda r: r.id, reverse=True)


def resolve(run: str | os.PathLike, models_dir: str | os.PathLike = "models") -> Run:
    """A run by folder path or by id under ``models_dir``; raises ValueError if unusable."""
    path = Path(run)
    if not path.is_dir():
        path = Path(models_dir) / str(run)
    if not path.is_dir():
        known = ", ".join(r.id for r in list_runs(models_dir)[:10]) or "none"
        raise ValueError(f"no run {run!r} (looked in {models_dir}; runs there: {known})")
    found = read_run(path)
    if found.error:
        raise ValueError(f"run {found.id} is broken: {found.error}")
    return found


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
