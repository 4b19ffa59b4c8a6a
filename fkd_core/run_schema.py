"""What a run folder's names and JSON files may hold: one id rule, one id maker, one schema.

Run folders come from other people (shared, unzipped, hand-edited), so everything read from
``config.json`` and ``metrics.json`` is checked here before any other code sees it. A file
that breaks a rule raises :class:`RunFileError` naming the file, the field and the problem;
the runs registry turns that into the run's "broken" reason. The same module builds the
``config.json`` of every kind of run, so training, specialists and ensembles write alike.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

from fkd_core.distribute import PRECISIONS, STRATEGIES, USED_STRATEGIES
from fkd_core.keypoints import KEYPOINT_NAMES

#: A run id: a folder name that is never hidden, never a path and safe in a URL or a page.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KINDS = ("single", "specialists", "ensemble")
#: No data set's labels sit this far from the pixel-index convention (faces15: +0.9 px).
MAX_LABEL_OFFSET = 5.0
#: No model, however untrained, is this far off on a 96-pixel face: a larger RMSE is a
#: corrupt or forged file, not a measurement.
MAX_RMSE = 1e4


class RunFileError(ValueError):
    """A run folder's name or JSON file breaks the schema; the message says where and how."""


def validate_run_id(run_id: object) -> str:
    """``run_id`` if it is a safe folder name, else a :class:`RunFileError` saying why."""
    if not isinstance(run_id, str):
        raise RunFileError(f"run id must be text, not {type(run_id).__name__}")
    if not RUN_ID_PATTERN.fullmatch(run_id):
        shown = run_id if len(run_id) <= 60 else run_id[:57] + "..."
        raise RunFileError(
            f"invalid run id {shown!r} ({len(run_id)} characters): use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (no paths, no hidden names)"
        )
    return run_id


def new_run_id(*parts: str) -> str:
    """A timestamped id such as ``20261129-071500-resnet-heatmap`` (UTC, to the second)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    tail = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts if p)
    return validate_run_id(f"{stamp}-{tail}"[:128] if tail else stamp)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_config(kind: str, run_id: str, *, arch: str, data: dict, model, label_offset: float,
               train_seconds: float, epochs_run: int | None, **extra) -> dict:
    """The ``config.json`` of a run of any kind: the fields every reader may rely on, then
    the kind's own (``train`` settings, ``members``, ``specialists`` …)."""
    import keras

    from fkd_core import __version__

    return {
        "kind": kind,
        "run_id": validate_run_id(run_id),
        "arch": arch,
        "label_offset": float(label_offset),
        "data": data,
        "model": {"name": model.name, "params": int(model.count_params())},
        "epochs_run": epochs_run,
        "train_seconds": round(float(train_seconds), 1),
        "created": now_iso(),
        "fkd_version": __version__,
        "keras_version": keras.__version__,
        **extra,
    }


# -- reading -----------------------------------------------------------------------------


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Field checks on one JSON object; each failure names the file and the field."""

    def __init__(self, file: str, obj):
        if not isinstance(obj, dict):
            raise RunFileError(f"{file}: must hold a JSON object, not {type(obj).__name__}")
        self.file = file
        self.obj = obj

    def fail(self, key: str, what: str):
        raise RunFileError(f"{self.file}: {key} {what}")

    def get(self, key: str, required: bool):
        if key not in self.obj or self.obj[key] is None:
            if required:
                self.fail(key, "is missing")
            return None
        return self.obj[key]

    def text(self, key: str, required: bool = True, choices=None) -> str | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 1000:
            self.fail(key, f"must be text of at most 1000 characters, not {_describe(value)}")
        if choices is not None and value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {_describe(value)}")
        return value

    def number(self, key: str, required: bool = True, low: float = -math.inf,
               high: float = math.inf, integer: bool = False) -> float | None:
        value = self.get(key, required)
        if value is None:
            return None
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            kind = "a whole number" if integer else "a number"
            self.fail(key, f"must be {kind}, not {_describe(value)}")
        if not math.isfinite(value) or not low <= value <= high:
            self.fail(key, f"must be between {low:g} and {high:g}, not {_describe(value)}")
        return value

    def mapping(self, key: str, required: bool = True) -> _Checker | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, not {type(value).__name__}")
        return _Checker(f"{self.file}: {key}", value)

    def text_list(self, key: str, required: bool = True) -> list[str] | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"must be a list of text, not {_describe(value)}")
        return value


def check_config(config) -> dict:
    """``config.json`` as read, after checking every field other code reads from it."""
    c = _Checker("config.json", config)
    kind = c.text("kind", required=False, choices=KINDS) or "single"
    c.text("run_id", required=False)
    c.text("arch", required=False)
    c.number("label_offset", required=False, low=-MAX_LABEL_OFFSET, high=MAX_LABEL_OFFSET)
    c.number("train_seconds", required=False, low=0)
    c.number("wall_seconds", required=False, low=0)
    c.number("epochs_run", required=False, low=0, integer=True)
    c.number("best_epoch", required=False, low=0, integer=True)
    for key in ("created", "fkd_version", "keras_version"):
        c.text(key, required=False)
    offset = c.mapping("source_offset", required=False)
    if offset is not None:
        for key in ("dx", "dy"):
            offset.number(key, low=-MAX_LABEL_OFFSET * 4, high=MAX_LABEL_OFFSET * 4)
    recipe = c.mapping("recipe", required=False)
    if recipe is not None:
        recipe.text("path", required=False)
        recipe.text("sha256", required=False)
        recipe.mapping("options", required=False)
    sweep = c.mapping("sweep", required=False)
    if sweep is not None:
        sweep.text("id")
        values = sweep.mapping("values")
        for key, value in values.obj.items():
            if isinstance(value, (dict, list)) or (isinstance(value, float)
                                                    and not math.isfinite(value)):
                values.fail(key, f"must be a single value, not {_describe(value)}")
    data = c.mapping("data", required=False)
    if data is not None:
        data.text("source", required=False)
        data.text("fingerprint", required=False)
        for key in ("rows", "train_rows", "val_rows", "holdout_rows"):
            data.number(key, required=False, low=0, integer=True)
    model = c.mapping("model", required=False)
    if model is not None:
        model.text("name", required=False)
        model.number("params", required=False, low=0, integer=True)
    train = c.mapping("train", required=kind == "single")
    if train is not None:
        train.text("arch", required=kind == "single")
        train.text("head", required=False)
        train.number("label_offset", required=False, low=-MAX_LABEL_OFFSET,
                     high=MAX_LABEL_OFFSET)
        train.number("val_fraction", required=False, low=0, high=1)
        train.number("holdout_fraction", required=False, low=0, high=1)
        train.number("seed", required=False, integer=True)
        train.text("strategy", required=False, choices=STRATEGIES)
        train.text("precision", required=False, choices=PRECISIONS)
    placed = c.mapping("distribute", required=False)
    if placed is not None:
        placed.text("strategy", choices=USED_STRATEGIES)
        placed.text("precision", choices=PRECISIONS)
        for key in ("replicas", "workers", "batch_size_per_replica", "global_batch_size"):
            placed.number(key, low=1, integer=True)
        for key in ("lr", "scaled_lr"):
            placed.number(key, required=False, low=0)
        placed.text_list("devices")
    if kind == "ensemble":
        members = c.text_list("members")
        weights = c.get("weights", required=False)
        if weights is not None and (
            not isinstance(weights, list) or len(weights) != len(members)
            or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights)
        ):
            c.fail("weights", f"must be {len(members)} finite numbers, one per member")
    if kind == "specialists":
        groups = c.mapping("specialists")
        for name, keypoints in groups.obj.items():
            unknown = [k for k in keypoints if k not in KEYPOINT_NAMES] if isinstance(
                keypoints, list) else None
            if unknown is None or unknown:
                groups.fail(name, f"must list keypoint names, not {_describe(keypoints)}")
    return config


def _rmse(c: _Checker, key: str, required: bool) -> float | None:
    return c.number(key, required=required, low=0, high=MAX_RMSE)


def _per_keypoint(c: _Checker, key: str, required: bool) -> None:
    per = c.mapping(key, required=required)
    if per is None:
        return
    for name, value in per.obj.items():
        if name not in KEYPOINT_NAMES:
            per.fail(name, "is not a keypoint name")
        if value is not None:
            _rmse(per, name, required=False)


def check_metrics(metrics) -> dict:
    """``metrics.json`` as read: every RMSE a finite number of pixels (null only per keypoint
    where no validation row labels it), so a NaN or a string never reaches a leaderboard."""
    c = _Checker("metrics.json", metrics)
    _rmse(c, "val_rmse", required=True)
    _rmse(c, "val_rmse_tta", required=False)
    _rmse(c, "holdout_rmse", required=False)
    _rmse(c, "holdout_rmse_tta", required=False)
    _per_keypoint(c, "per_keypoint", required=True)
    _per_keypoint(c, "per_keypoint_tta", required=False)
    for key in ("val_images", "labelled_values", "holdout_images"):
        c.number(key, required=False, low=0, integer=True)
    return metrics
