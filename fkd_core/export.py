"""Exporting a run for deployment, and predicting with an exported TFLite file.

Any run (single, specialists, ensemble) is one Keras graph, exported either as a TensorFlow
SavedModel folder or as a TFLite flatbuffer (optionally with dynamic-range quantisation: int8
weights, float activations). The graph maps faces scaled to [0, 1], shape (N, 96, 96, 1), to
normalised keypoints (:mod:`fkd_core.targets`); what a predictor needs beyond the graph to
answer exactly as :meth:`fkd_core.runs.Run.predict` does — the run's ``label_offset`` — travels
inside the export as a small JSON note (:data:`NOTE_NAME`): a TFLite metadata entry, or
``assets.extra/fkd.json`` in a SavedModel (the folder TensorFlow keeps for files the graph
does not use). One file is one deployable model: copying it cannot lose the note.

The note comes back from files other people hand over, so :func:`check_note` validates it as
untrusted input, and :class:`TFLiteModel` refuses anything that is not a TFLite model with
the 96 × 96 → 30 shapes, with an :class:`ExportError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from fkd_core import __version__
from fkd_core.files import atomic_write, check_output_file
from fkd_core.keypoints import COLUMN_NAMES, IMAGE_SIZE, N_COORDS, N_KEYPOINTS
from fkd_core.run_schema import MAX_LABEL_OFFSET, RunFileError, _Checker, validate_run_id
from fkd_core.runs import Run, RunError

FORMATS = ("savedmodel", "tflite")
QUANTIZE = ("dynamic",)
#: The TFLite metadata entry (and, as ``fkd.json``, the SavedModel file) holding the note.
NOTE_NAME = "fkd_keypoints"
NOTE_FILE = Path("assets.extra") / "fkd.json"
NOTE_FORMAT = "fkd-keypoints"
NOTE_VERSION = 1
_MAX_NOTE_BYTES = 64 * 1024
#: Larger than any keypoint model of this project; flatbuffers cannot exceed 2 GiB anyway.
MAX_TFLITE_BYTES = 1 << 31
_TFLITE_IDENTIFIER = b"TFL3"
INPUT = "float32 (N, 96, 96, 1): grayscale pixels / 255"
OUTPUT = "float32 (N, 30): (pixel - 47.5) / 48 in COLUMN_NAMES order, x without label_offset"


class ExportError(RunError):
    """An export that cannot be made, or an exported file that cannot be used; the message
    names the file and the reason."""


def export_note(run: Run, fmt: str, quantize: str | None) -> dict:
    """What a predictor needs besides the graph, and where the model came from.

    ``mean_shape`` is the run's training framing (:func:`fkd_core.photos.run_mean_shape`):
    ``fkd predict`` crops photos' faces to it, so a .tflite file frames them as its run does.
    """
    from fkd_core.photos import run_mean_shape

    shape = run_mean_shape(run)
    return {
        "format": NOTE_FORMAT,
        "version": NOTE_VERSION,
        "run_id": run.id,
        "kind": run.kind,
        "arch": run.arch,
        "label_offset": run.label_offset,
        "export_format": fmt,
        "quantize": quantize or "none",
        "input": INPUT,
        "output": OUTPUT,
        "columns": list(COLUMN_NAMES),
        "mean_shape": None if shape is None else np.round(shape, 4).tolist(),
        "val_rmse": run.val_rmse,
        "fkd_version": __version__,
    }


def check_note(note, source: str) -> dict:
    """The note as read from ``source``, after checking every field a predictor relies on."""
    try:
        c = _Checker(f"{source}: {NOTE_NAME}", note)
        c.text("format", choices=(NOTE_FORMAT,))
        c.number("version", low=NOTE_VERSION, high=NOTE_VERSION, integer=True)
        validate_run_id(c.text("run_id"))
        c.text("kind", required=False)
        c.text("arch", required=False)
        c.number("label_offset", low=-MAX_LABEL_OFFSET, high=MAX_LABEL_OFFSET)
        c.text("export_format", choices=FORMATS)
        c.text("quantize", choices=("none", *QUANTIZE))
        c.number("val_rmse", required=False, low=0)
        if c.text_list("columns") != list(COLUMN_NAMES):
            c.fail("columns", "are not the 30 keypoint columns in fkd's order")
        shape = c.get("mean_shape", required=False)
        if shape is not None and not _is_shape(shape):
            c.fail("mean_shape", f"must be {N_KEYPOINTS} [x, y] pairs of pixel coordinates "
                                 f"within {_SHAPE_RANGE}")
    except RunFileError as exc:
        raise ExportError(str(exc)) from None
    return note


_SHAPE_RANGE = (-IMAGE_SIZE, 2 * IMAGE_SIZE)


def _is_shape(value) -> bool:
    low, high = _SHAPE_RANGE
    return (isinstance(value, list) and len(value) == N_KEYPOINTS
            and all(isinstance(p, list) and len(p) == 2 for p in value)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and low <= v <= high for p in value for v in p))


def _check_target(path: Path) -> Path:
    """``path`` if nothing is there yet and its folder is writable: an export never replaces
    a file or folder (a deployed model may be in use, and a folder cannot be swapped in one
    atomic step)."""
    if path.exists() or path.is_symlink():
        raise ExportError(f"{path} already exists; remove it or choose another output path")
    try:
        return check_output_file(path)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def _save_graph(model, folder: Path) -> None:
    """The Keras graph as a SavedModel (``serve`` / ``serving_default`` signatures)."""
    model.export(str(folder), format="tf_saved_model", verbose=False)


def _add_tflite_note(flatbuffer: bytes, note: dict) -> bytes:
    """``flatbuffer`` with the note appended as a metadata entry (buffer + name)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(note).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = NOTE_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _tflite_bytes(model, quantize: str | None, note: dict) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="fkd-export-") as tmp:
        _save_graph(model, Path(tmp) / "saved")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved"))
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    return _add_tflite_note(flatbuffer, note)


def export_run(run: Run, path: str | os.PathLike, fmt: str, *, quantize: str | None = None,
               model=None) -> Path:
    """Write ``run`` to ``path`` as ``fmt`` (``savedmodel``: a folder; ``tflite``: a file).

    The export appears at ``path`` complete or not at all (written beside it, then renamed)
    and never replaces anything already there.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    if quantize is not None and fmt != "tflite":
        raise ExportError("quantisation is for the tflite format only")
    path = _check_target(Path(path))
    model = model if model is not None else run.load_model()
    note = export_note(run, fmt, quantize)
    if fmt == "tflite":
        flatbuffer = _tflite_bytes(model, quantize, note)
        _check_target(path)
        with atomic_write(path, "wb") as f:
            f.write(flatbuffer)
        return path
    staging = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.mkdir(staging)  # mode by umask, like any other program's folder
    try:
        _save_graph(model, staging / "model")
        (staging / "model" / NOTE_FILE).parent.mkdir(exist_ok=True)
        (staging / "model" / NOTE_FILE).write_text(json.dumps(note, indent=1) + "\n")
        _check_target(path)
        os.rename(staging / "model", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def savedmodel_note(path: str | os.PathLike) -> dict:
    """The checked note of a SavedModel folder written by :func:`export_run`."""
    file = Path(path) / NOTE_FILE
    try:
        with open(file, "rb") as f:
            text = f.read(_MAX_NOTE_BYTES + 1)
        if len(text) > _MAX_NOTE_BYTES:
            raise ValueError(f"larger than {_MAX_NOTE_BYTES} bytes")
        note = json.loads(text.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ExportError(f"{path} is not a SavedModel exported by fkd: {file} is unreadable "
                          f"({type(exc).__name__}: {exc})") from None
    return check_note(note, str(path))


def _read_tflite(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ExportError(f"{path} is not a file")
        if size > MAX_TFLITE_BYTES:
            raise ExportError(f"{path} is {size} bytes, more than a TFLite model can hold")
        content = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
        raise ExportError(f"{path} is not a TFLite model (no TFL3 file identifier)")
    return content


def tflite_note(content: bytes, source: str) -> dict:
    """The checked note inside a TFLite flatbuffer; :class:`ExportError` if it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != NOTE_NAME.encode():
                continue
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            if isinstance(data, int) or len(data) > _MAX_NOTE_BYTES:
                raise ValueError(f"its {NOTE_NAME} entry is empty or too large")
            note = json.loads(data.tobytes().decode("utf-8"))
            break
        else:
            raise ExportError(f"{source} is a TFLite model but not one exported by fkd export "
                              f"(no {NOTE_NAME} metadata: its keypoint convention is unknown)")
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 — a malformed flatbuffer fails in many ways
        raise ExportError(f"{source} is not a readable TFLite model "
                          f"({type(exc).__name__}: {exc})".splitlines()[0][:300]) from None
    return check_note(note, source)


class _Interpreter:
    """A TFLite interpreter behind Keras's ``predict(x, batch_size, verbose)``, so
    :func:`fkd_core.predict.predict_keypoints` (flip-TTA included) runs it unchanged.

    An interpreter is not thread-safe: calls are serialised.
    """

    def __init__(self, content: bytes, source: str, num_threads: int | None):
        import tensorflow as tf

        try:
            with warnings.catch_warnings():  # TF 2.21 points at ai_edge_litert, not installed
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                self._it = tf.lite.Interpreter(model_content=content, num_threads=num_threads)
        except Exception as exc:  # noqa: BLE001 — TFLite's own errors name no file
            raise ExportError(f"{source} does not load as a TFLite model "
                              f"({type(exc).__name__}: {exc})".splitlines()[0][:300]) from None
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        shape_in = [tuple(d["shape_signature"][1:]) for d in inputs]
        shape_out = [tuple(d["shape_signature"][1:]) for d in outputs]
        if shape_in != [(IMAGE_SIZE, IMAGE_SIZE, 1)] or shape_out != [(N_COORDS,)] \
                or inputs[0]["dtype"] != np.float32 or outputs[0]["dtype"] != np.float32:
            raise ExportError(f"{source} is not a keypoint model: it maps {shape_in} to "
                              f"{shape_out}, not one (96, 96, 1) face to 30 float32 values")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        self._batch = None
        self._lock = threading.Lock()

    def predict(self, x, batch_size: int = 256, verbose=0) -> np.ndarray:
        x = np.asarray(x, np.float32)
        out = np.empty((len(x), N_COORDS), np.float32)
        with self._lock:
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size]
                if len(chunk) != self._batch:
                    self._it.resize_tensor_input(self._input, chunk.shape, strict=True)
                    self._it.allocate_tensors()
                    self._batch = len(chunk)
                self._it.set_tensor(self._input, chunk)
                self._it.invoke()
                out[start:start + len(chunk)] = self._it.get_tensor(self._output)
        return out


class TFLiteModel:
    """An exported ``.tflite`` file that predicts like the run it came from.

    ``predict`` has :meth:`fkd_core.runs.Run.predict`'s contract: uint8 faces (N, 96, 96) →
    keypoints (N, 30) in pixels of the run's data set convention, optionally with flip-TTA.
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None):
        self.path = Path(path)
        content = _read_tflite(self.path)
        self.note = tflite_note(content, str(self.path))
        self.model = _Interpreter(content, str(self.path), num_threads)
        self.size_bytes = len(content)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def run_id(self) -> str:
        """The run it was exported from."""
        return self.note["run_id"]

    @property
    def label_offset(self) -> float:
        return float(self.note["label_offset"])

    @property
    def quantize(self) -> str:
        return self.note["quantize"]

    @property
    def mean_shape(self) -> np.ndarray | None:
        """The run's training framing, (15, 2) pixel indices, for cropping photos' faces."""
        shape = self.note.get("mean_shape")
        return None if shape is None else np.asarray(shape, np.float64)

    def predict(self, images: np.ndarray, *, tta: bool = False) -> np.ndarray:
        from fkd_core.predict import predict_keypoints

        pred = predict_keypoints(self.model, images, tta=tta, label_offset=self.label_offset)
        bad = ~np.isfinite(pred).all(axis=1)
        if bad.any():
            raise ExportError(f"{self.path} is broken: it predicts NaN or infinity for "
                              f"{int(bad.sum())} of {len(pred)} faces")
        return pred
