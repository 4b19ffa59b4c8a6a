"""Comparing runs: learning curves, sweep sensitivity and each model's inference cost.

A run folder's ``history.csv`` (Keras's CSVLogger, one row per epoch) comes from whoever made
the folder, so :func:`read_history` checks it as strictly as :mod:`fkd_core.run_schema` checks
the JSON files: a bad file is a :class:`HistoryError` naming the file, the row and what is
wrong, which the dashboard shows as that run's reason. Sweeps are read from the runs' own
``config.json`` tags (``sweep = {id, values}``, :mod:`fkd_core.sweeps`), so a sweep's table
holds exactly the runs that exist. The inference cost (milliseconds per face as
:meth:`fkd_core.runs.Run.predict` predicts, and the FLOPs of one forward pass) is measured
once per run and machine and kept in the run folder (:func:`cached_cost`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fkd_core.files import atomic_write

HISTORY = "history.csv"
#: A history larger than this is not a training log (a 10 000-epoch run writes ~1 MB).
MAX_HISTORY_BYTES = 5_000_000
MAX_EPOCHS = 100_000
#: A column name in history.csv: a Keras metric name.
COLUMN = re.compile(r"[A-Za-z0-9_.]{1,64}")
#: No loss or metric of a real training reaches this; a larger value is a forged file.
MAX_VALUE = 1e12
#: What the learning curves can show: (training column, validation column).
CURVES = {"RMSE (px)": ("rmse_px", "val_rmse_px"), "loss": ("loss", "val_loss")}


class HistoryError(ValueError):
    """A history.csv that cannot be used; the message says which file, where and why."""


@dataclass(frozen=True)
class History:
    """A run's per-epoch log: ``epochs`` counted from 1 (as ``config.json``'s ``best_epoch``)
    and each column's values (NaN where Keras logged none)."""

    epochs: np.ndarray
    columns: dict[str, np.ndarray]

    def curve(self, column: str) -> np.ndarray | None:
        return self.columns.get(column)

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the lowest validation RMSE (else validation loss): the weights
        early stopping keeps."""
        for column in ("val_rmse_px", "val_loss"):
            values = self.columns.get(column)
            if values is not None and np.isfinite(values).any():
                return int(self.epochs[int(np.nanargmin(values))])
        return None


def read_history(path: str | os.PathLike) -> History:
    """A run's ``history.csv`` (the file, or the run folder holding it), checked: a header
    naming ``epoch`` and ``loss``, one row per epoch with increasing whole epoch numbers,
    every value a finite number (or ``nan``, which Keras writes for a missing value)."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY
    name = f"{path.parent.name}/{path.name}"
    try:
        size = path.stat().st_size
        if size > MAX_HISTORY_BYTES:
            raise HistoryError(f"{name}: {size} bytes, more than a training log "
                               f"({MAX_HISTORY_BYTES} at most)")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{name}: missing (ensembles and specialists have none)") from None
    except OSError as exc:
        raise HistoryError(f"{name}: unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise HistoryError(f"{name}: not CSV ({exc})") from None
    rows = [r for r in rows if r]
    if not rows:
        raise HistoryError(f"{name}: empty")
    header = [h.strip() for h in rows[0]]
    for h in header:
        if not COLUMN.fullmatch(h):
            shown = h if len(h) <= 40 else h[:37] + "..."
            raise HistoryError(f"{name}: column name {shown!r} is not a metric name "
                               "(letters, digits, '_' or '.', at most 64)")
    if len(set(header)) != len(header):
        raise HistoryError(f"{name}: a column name appears twice")
    for required in ("epoch", "loss"):
        if required not in header:
            raise HistoryError(f"{name}: no {required!r} column (header: "
                               f"{', '.join(header)[:200]})")
    body = rows[1:]
    if not body:
        raise HistoryError(f"{name}: no epochs logged")
    if len(body) > MAX_EPOCHS:
        raise HistoryError(f"{name}: {len(body)} rows, more than {MAX_EPOCHS} epochs")
    values = np.empty((len(body), len(header)), np.float64)
    for i, row in enumerate(body):
        line = i + 2
        if len(row) != len(header):
            raise HistoryError(f"{name}: line {line} has {len(row)} values, the header "
                               f"{len(header)}")
        for j, cell in enumerate(row):
            values[i, j] = _number(cell, f"{name}: line {line}, {header[j]}")
    epoch = values[:, header.index("epoch")]
    if not (np.isfinite(epoch).all() and (epoch == np.round(epoch)).all() and epoch[0] >= 0):
        raise HistoryError(f"{name}: epoch must be a whole number from 0")
    if len(epoch) > 1 and not (np.diff(epoch) > 0).all():
        line = int(np.flatnonzero(np.diff(epoch) <= 0)[0]) + 3
        raise HistoryError(f"{name}: line {line}: epochs must increase")
    columns = {h: values[:, j] for j, h in enumerate(header) if h != "epoch"}
    return History(epoch.astype(np.int64) + 1, columns)


def _number(cell: str, where: str) -> float:
    text = cell.strip()
    if text.lower() in ("nan", ""):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 30 else text[:27] + "..."
        raise HistoryError(f"{where}: {shown!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_VALUE:
        raise HistoryError(f"{where}: {text[:30]} is not a finite number below {MAX_VALUE:g}")
    return value


# -- sweeps ------------------------------------------------------------------------------


def value_label(value) -> str:
    """A swept value as the page shows it: text as itself, anything else as JSON."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sweeps_of(runs) -> dict[str, list]:
    """Usable runs by the sweep that made them (their ``config.json`` tag), ids in order."""
    found: dict[str, list] = {}
    for run in runs:
        tag = run.config.get("sweep") if run.ok else None
        if isinstance(tag, dict) and isinstance(tag.get("id"), str):
            found.setdefault(tag["id"], []).append(run)
    return {k: sorted(v, key=lambda r: r.id) for k, v in sorted(found.items())}


def swept_keys(runs) -> list[str]:
    """The options a sweep's runs vary, in the order their tags name them."""
    keys: list[str] = []
    for run in runs:
        for key in run.config["sweep"]["values"]:
            if key not in keys:
                keys.append(key)
    return keys


def _order(values: list) -> list:
    """Distinct values, numbers by size, anything else by its label."""
    distinct = []
    for v in values:
        if not any(v == d and type(v) is type(d) for d in distinct):
            distinct.append(v)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    return sorted(distinct, key=(lambda v: v) if numeric else value_label)


@dataclass(frozen=True)
class SensitivityLine:
    """Validation RMSE along one swept option for one value of another (``label``): at each
    x value the mean, the best and how many runs (the other options' values) it covers."""

    label: str
    x: list[str]
    mean: np.ndarray
    best: np.ndarray
    count: np.ndarray
    best_run: list[str]


def sensitivity(runs, x: str, by: str | None = None) -> tuple[list[str], list[SensitivityLine]]:
    """(x axis labels in order, one line per value of ``by``, or one line if None) from a
    sweep's runs; a line has a point only where runs with those values exist."""
    have = [r for r in runs if x in r.config["sweep"]["values"] and r.val_rmse is not None]
    xs = _order([r.config["sweep"]["values"][x] for r in have])
    groups = [None] if by is None else _order(
        [r.config["sweep"]["values"].get(by) for r in have])
    labels = [value_label(v) for v in xs]
    lines = []
    for g in groups:
        mine = [r for r in have if by is None or _same(r.config["sweep"]["values"].get(by), g)]
        px, mean, best, count, best_run = [], [], [], [], []
        for v, label in zip(xs, labels):
            at = [r for r in mine if _same(r.config["sweep"]["values"][x], v)]
            if not at:
                continue
            rmse = np.array([r.val_rmse for r in at], float)
            px.append(label)
            mean.append(float(rmse.mean()))
            best.append(float(rmse.min()))
            count.append(len(at))
            best_run.append(at[int(rmse.argmin())].id)
        if px:
            name = "all runs" if by is None else f"{by} = {value_label(g)}"
            lines.append(SensitivityLine(name, px, np.array(mean), np.array(best),
                                         np.array(count), best_run))
    return labels, lines


def _same(a, b) -> bool:
    return a == b and type(a) is type(b)


def settings_text(run) -> str:
    """The settings that tell runs apart, on one line (the comparison's hover)."""
    train = run.config.get("train") or {}
    parts = [f"{k}={value_label(train[k])}" for k in
             ("head", "width", "depth", "dropout", "lr", "batch_size", "epochs", "seed")
             if train.get(k) is not None]
    if run.kind != "single":
        parts.insert(0, f"kind={run.kind}")
    tag = run.config.get("sweep")
    if isinstance(tag, dict):
        parts.append(f"sweep {value_label(tag.get('id'))}")
    return " · ".join(parts)


# -- inference cost -----------------------------------------------------------------------

#: Faces per timed call, and timed calls (the median counts) after one warm-up call.
COST_BATCH = 64
COST_REPEATS = 5


@dataclass(frozen=True)
class Cost:
    """One run's measured inference cost on one machine."""

    ms_per_image: float
    flops: int  # of one forward pass of one face: 2 × multiply-adds of convolutions and dense
    batch: int
    repeats: int
    machine: str
    measured: float  # Unix time


def machine() -> str:
    """What the timing belongs to: host, processor type and CPU count."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs"


def _cost_path(run_path: Path) -> Path:
    key = hashlib.blake2b(machine().encode(), digest_size=6).hexdigest()
    return run_path / f"inference-{key}.json"


def model_flops(model) -> int:
    """Floating-point operations of one face's forward pass: 2 × the multiply-adds of every
    convolution and dense layer, members of composite models included. Batch norm,
    activations and pooling are left out (a few per cent of a convolutional network's)."""
    import keras

    layers = keras.layers
    total = 0
    for layer in _all_layers(model):
        try:
            if isinstance(layer, layers.SeparableConv2D):
                spatial = _spatial(layer.output.shape)
                total += spatial * (_size(layer.depthwise_kernel) + _size(layer.pointwise_kernel))
            elif isinstance(layer, layers.DepthwiseConv2D):
                total += _spatial(layer.output.shape) * _size(layer.kernel)
            elif isinstance(layer, layers.Conv2DTranspose):
                total += _spatial(layer.input.shape) * _size(layer.kernel)
            elif isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
                total += _spatial(layer.output.shape) * _size(layer.kernel)
            elif isinstance(layer, layers.Dense):
                total += _spatial(layer.output.shape) * _size(layer.kernel)
        except (AttributeError, ValueError):  # a layer never called in a graph: no shapes
            continue
    return 2 * int(total)


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer is not model:
            yield from _all_layers(layer)
        else:
            yield layer


def _size(weight) -> int:
    return int(np.prod(tuple(weight.shape)))


def _spatial(shape) -> int:
    """Positions a layer's kernel is applied at: every dimension but batch and channels."""
    return int(np.prod([d for d in tuple(shape)[1:-1]], dtype=np.int64))


def measure_cost(run, images: np.ndarray, *, model=None, repeats: int = COST_REPEATS) -> Cost:
    """Time ``run.predict`` on ``images`` (after one warm-up call) and count the FLOPs."""
    model = model if model is not None else run.load_model()
    images = np.asarray(images)
    run.predict(images, model=model)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run.predict(images, model=model)
        times.append(time.perf_counter() - started)
    ms = 1000.0 * float(np.median(times)) / len(images)
    return Cost(round(ms, 4), model_flops(model), len(images), repeats, machine(), time.time())


def read_cost(run_path: str | os.PathLike) -> Cost | None:
    """This machine's cached cost of a run, or None if none is cached or the file is not one
    this module wrote (it is measured again)."""
    try:
        found = json.loads(_cost_path(Path(run_path)).read_text(encoding="utf-8"))
        cost = Cost(**found)
    except (OSError, ValueError, TypeError):
        return None
    numbers_ok = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in (cost.ms_per_image, cost.flops, cost.batch, cost.repeats, cost.measured))
    if not numbers_ok or cost.ms_per_image <= 0 or cost.machine != machine():
        return None
    return cost


def cached_cost(run, images: np.ndarray, *, model=None) -> Cost:
    """The run's cost on this machine: read from the run folder, else measured and written
    there (atomically; a read-only folder just is not written)."""
    found = read_cost(run.path)
    if found is not None:
        return found
    cost = measure_cost(run, images, model=model)
    try:
        with atomic_write(_cost_path(run.path), encoding="utf-8") as f:
            f.write(json.dumps(asdict(cost)) + "\n")
    except OSError:
        pass
    return cost
