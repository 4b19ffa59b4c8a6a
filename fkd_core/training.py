"""Training a model into a run folder that appears only when the run is complete.

A run is written to a hidden ``models/.incomplete-<id>`` folder and renamed to
``models/<id>`` after its model, history, predictions and metrics are all on disk, so a
killed, interrupted or failed run never looks like a finished one (the runs registry skips
hidden folders). SIGTERM is turned into KeyboardInterrupt for the same clean-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fkd_core import __version__, metrics
from fkd_core.dataset import KeypointSet
from fkd_core.keypoints import COLUMN_NAMES, KEYPOINT_NAMES, column_indices


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run; stored verbatim in its config.json."""

    arch: str = "resnet"
    head: str = "heatmap"
    width: float = 1.0
    depth: int | None = None
    dropout: float | None = None
    head_options: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"  # "cosine" (decay over the epochs) or "plateau"
    patience: int = 10  # early stopping on validation RMSE, restoring the best weights
    val_fraction: float = 0.1
    seed: int = 0
    augment: dict | None = None  # AugmentConfig fields; None trains on the plain images
    keypoints: list[str] | None = None  # train only these (specialists); None = all 15
    init_from: str | None = None  # run folder whose model.keras is the starting point
    max_minutes: float | None = None  # stop after this much training time (best weights kept)
    label_offset: float | None = None  # labels' x offset from pixel indices; None: estimate
    steps_per_epoch: int | None = None  # cap (tests and smoke runs)

    def __post_init__(self):
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be 'cosine' or 'plateau', not {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.keypoints is not None:
            column_indices(self.keypoints)  # raises KeyError naming an unknown keypoint
        if self.augment is not None:  # store every setting, not just the overrides
            from fkd_core.augment import AugmentConfig

            self.augment = AugmentConfig.from_dict(self.augment).to_dict()


def new_run_id(config: TrainConfig, kind: str | None = None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind or config.arch}-{config.head}"


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


@contextlib.contextmanager
def staged_run(models_dir: str | os.PathLike, run_id: str):
    """Yield a hidden staging folder; rename it to ``models_dir/run_id`` only on success."""
    models_dir = Path(models_dir)
    final = models_dir / run_id
    if final.exists():
        raise FileExistsError(f"run {final} already exists")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".incomplete-{run_id}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with _sigterm_as_interrupt():
            yield staging
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _to_float_images(images: np.ndarray):
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., None] / 255.0


def make_dataset(
    images: np.ndarray,
    keypoints: np.ndarray,
    batch_size: int,
    *,
    augment: dict | None = None,
    shuffle: bool = False,
    seed: int = 0,
):
    """A ``tf.data`` pipeline of (image in [0, 1], normalised targets), augmented in parallel.

    Images stay uint8 until batched (4× less memory than floats); augmentation runs on whole
    batches in pixel coordinates, then targets are normalised for the model.
    """
    import tensorflow as tf

    from fkd_core.augment import AugmentConfig, augment_dataset
    from fkd_core.targets import normalise_keypoints

    ds = tf.data.Dataset.from_tensor_slices((images, keypoints.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (_to_float_images(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = augment_dataset(ds, AugmentConfig.from_dict(augment), seed)
    ds = ds.map(lambda x, y: (x, normalise_keypoints(y)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _time_budget(minutes: float):
    """A Keras callback that stops training once ``minutes`` of wall time have passed."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.deadline = time.monotonic() + 60.0 * minutes

        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() >= self.deadline:
                self.model.stop_training = True

    return TimeBudget()


def build_model(config: TrainConfig):
    import keras

    from fkd_core.architectures import create_model

    if config.init_from:
        path = Path(config.init_from) / "model.keras"
        return keras.models.load_model(path, safe_mode=True, compile=False)
    return create_model(
        config.arch, width=config.width, depth=config.depth, head=config.head,
        dropout=config.dropout, **config.head_options,
    )


def training_targets(data: KeypointSet, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(row positions to train on, targets) — a specialist sees only its keypoints' columns.

    A specialist trains on every row that labels its keypoints: for the four always-present
    keypoints that is every row, not just the complete ~30 %.
    """
    targets = data.keypoints.copy()
    targets[:, 0::2] -= config.label_offset or 0.0  # models learn pixel-index coordinates
    if config.keypoints is None:
        return np.arange(len(data)), targets
    keep = column_indices(config.keypoints)
    mask = np.ones(targets.shape[1], bool)
    mask[keep] = False
    targets[:, mask] = np.nan
    return data.rows_labelling(config.keypoints), targets


def train(
    data: KeypointSet,
    config: TrainConfig,
    models_dir: str | os.PathLike = "models",
    *,
    run_id: str | None = None,
    verbose: int | str = "auto",
    extra_callbacks: Sequence = (),
    kind: str = "single",
    extra_config: dict | None = None,
    on_staged: Callable[[Path], None] | None = None,
) -> Path:
    """Train one model on ``data`` and write its run folder; returns the folder's path."""
    import keras

    from fkd_core.losses import MaskedRMSEPixels, masked_mse
    from fkd_core.predict import predict_keypoints

    keras.utils.set_random_seed(config.seed)
    run_id = run_id or new_run_id(config)
    if config.label_offset is None:
        from fkd_core.calibration import estimate_label_offset

        config = dataclasses.replace(
            config, label_offset=estimate_label_offset(data.images, data.keypoints)
        )
    offset = config.label_offset
    train_pos, val_pos = data.split(config.val_fraction, config.seed)
    usable, targets = training_targets(data, config)
    train_pos = np.intersect1d(train_pos, usable)
    val_pos_fit = np.intersect1d(val_pos, usable)
    if len(train_pos) == 0 or len(val_pos_fit) == 0:
        raise ValueError("no rows label the requested keypoints in the train or validation split")

    with staged_run(models_dir, run_id) as staging:
        if on_staged:
            on_staged(staging)
        started = time.time()
        model = build_model(config)
        steps = config.steps_per_epoch or int(np.ceil(len(train_pos) / config.batch_size))
        if config.schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(
                config.lr, decay_steps=max(1, steps * config.epochs), alpha=0.02
            )
        else:
            lr = config.lr
        model.compile(
            optimizer=keras.optimizers.Adam(lr), loss=masked_mse, metrics=[MaskedRMSEPixels()]
        )
        train_ds = make_dataset(
            data.images[train_pos], targets[train_pos], config.batch_size,
            augment=config.augment, shuffle=True, seed=config.seed,
        )
        if config.steps_per_epoch:
            train_ds = train_ds.repeat()
        val_ds = make_dataset(data.images[val_pos_fit], targets[val_pos_fit], 256)
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor="val_rmse_px", mode="min", patience=config.patience,
                restore_best_weights=True,
            ),
            keras.callbacks.CSVLogger(str(staging / "history.csv")),
            keras.callbacks.TerminateOnNaN(),
            *extra_callbacks,
        ]
        if config.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor="val_rmse_px", mode="min", factor=0.5, patience=max(2, config.patience // 3)
            ))
        if config.max_minutes:
            callbacks.append(_time_budget(config.max_minutes))
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch, callbacks=callbacks, verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles; Keras cannot shuffle a Dataset
        )
        train_seconds = time.time() - started
        if not np.all(np.isfinite(history.history.get("loss", [0.0]))):
            raise FloatingPointError("training diverged (loss became NaN); try a lower --lr")
        model.save(staging / "model.keras")

        val_images = data.images[val_pos]
        pred = predict_keypoints(model, val_images, label_offset=offset)
        pred_tta = predict_keypoints(model, val_images, tta=True, label_offset=offset)
        truth = data.keypoints[val_pos].copy()
        if config.keypoints:  # a specialist is scored on its own keypoints only
            truth[np.isnan(targets[val_pos])] = np.nan
        write_predictions(staging, data.row_ids[val_pos], pred, pred_tta, truth)
        write_json(staging / "metrics.json", metrics_report(pred, pred_tta, truth))
        run_config = {
            "kind": kind,
            "run_id": run_id,
            "train": dataclasses.asdict(config),
            "data": {
                "source": data.source, "fingerprint": data.fingerprint, "rows": len(data),
                "train_rows": int(len(train_pos)), "val_rows": int(len(val_pos)),
            },
            "model": {"name": model.name, "params": int(model.count_params())},
            "epochs_run": len(history.history.get("loss", [])),
            "best_epoch": _best_epoch(history.history),
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.time() - started, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fkd_version": __version__,
            "keras_version": keras.__version__,
            **(extra_config or {}),
        }
        write_json(staging / "config.json", run_config)
    return Path(models_dir) / run_id


def _best_epoch(history: dict) -> int | None:
    val = history.get("val_rmse_px")
    return int(np.nanargmin(val)) + 1 if val else None


def write_predictions(folder: Path, row_ids, pred, pred_tta, truth) -> None:
    np.savez(
        folder / "val_predictions.npz", row_ids=np.asarray(row_ids), pred=pred.astype(np.float32),
        pred_tta=pred_tta.astype(np.float32), truth=np.asarray(truth, np.float32),
    )


def _finite_or_none(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.atleast_1d(values)]


def metrics_report(pred: np.ndarray, pred_tta: np.ndarray | None, truth: np.ndarray) -> dict:
    """metrics.json: overall and per-keypoint RMSE in pixels, plain and with flip-TTA.

    A keypoint no validation row labels has RMSE null (JSON has no NaN).
    """
    per_kp = _finite_or_none(metrics.per_keypoint_rmse(pred, truth))
    out = {
        "val_rmse": _finite_or_none(metrics.rmse(pred, truth))[0],
        "per_keypoint": dict(zip(KEYPOINT_NAMES, per_kp)),
        "val_images": int(len(truth)),
        "labelled_values": int(np.isfinite(truth).sum()),
        "columns": list(COLUMN_NAMES),
    }
    if pred_tta is not None:
        out["val_rmse_tta"] = _finite_or_none(metrics.rmse(pred_tta, truth))[0]
        per_kp_tta = _finite_or_none(metrics.per_keypoint_rmse(pred_tta, truth))
        out["per_keypoint_tta"] = dict(zip(KEYPOINT_NAMES, per_kp_tta))
    return out
