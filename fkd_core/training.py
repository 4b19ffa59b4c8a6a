"""Training a model into a run folder that appears only when the run is complete.

A run is written to a staging folder of its own (:func:`fkd_core.runs.staged_run`) and
renamed to ``models/<id>`` after its model, history, predictions and metrics are all on
disk, so a killed, interrupted or failed run never looks like a finished one. SIGTERM is
turned into KeyboardInterrupt for the same clean-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fkd_core import metrics
from fkd_core.dataset import KeypointSet
from fkd_core.files import atomic_write
from fkd_core.keypoints import COLUMN_NAMES, KEYPOINT_NAMES, column_indices
from fkd_core.run_schema import new_run_id, run_config
from fkd_core.runs import staged_run
from fkd_core.targets import SCALE


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
    holdout_fraction: float = 0.0  # untouched rows, scored only once the run is done
    seed: int = 0
    augment: dict | None = None  # AugmentConfig fields; None trains on the plain images
    keypoints: list[str] | None = None  # train only these (specialists); None = all 15
    init_from: str | None = None  # run folder whose model.keras is the starting point
    max_minutes: float | None = None  # stop after this much training time (best weights kept)
    label_offset: float | None = None  # labels' x offset from pixel indices; None: estimate
    steps_per_epoch: int | None = None  # cap (tests and smoke runs)
    learn_source_offset: bool = False  # fit the four-keypoint rows' (x, y) labelling offset
    strategy: str = "auto"  # fkd_core.distribute: batch_size is per replica, lr scaled with them
    precision: str = "float32"  # or "mixed" (float16 compute, GPU only)
    ema: float | None = None  # momentum of the weights' moving average used for evaluation
    pseudo_labels: str | None = None  # teacher run whose flip-TTA guesses fill missing labels
    pseudo_weight: float = 0.5  # a pseudo-label's weight in the loss (a real label's is 1)

    def __post_init__(self):
        from fkd_core.distribute import PRECISIONS, STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                             f"not {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.precision!r}")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be 'cosine' or 'plateau', not {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be in (0, 1), not {self.ema}")
        if not 0.0 < self.pseudo_weight <= 1.0:
            raise ValueError(f"pseudo_weight must be in (0, 1], not {self.pseudo_weight}")
        if self.pseudo_labels and self.learn_source_offset:
            raise ValueError("pseudo-labels and a learned source offset cannot be combined: "
                             "a teacher's guess follows no labelling source")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), not {self.val_fraction}")
        if not 0.0 <= self.holdout_fraction < 1.0 - self.val_fraction:
            raise ValueError(f"holdout_fraction must be in [0, {1.0 - self.val_fraction:g}) "
                             f"with val_fraction {self.val_fraction:g}, "
                             f"not {self.holdout_fraction}")
        if self.keypoints is not None:
            column_indices(self.keypoints)  # raises KeyError naming an unknown keypoint
        if self.augment is not None:  # store every setting, not just the overrides
            from fkd_core.augment import AugmentConfig

            self.augment = AugmentConfig.from_dict(self.augment).to_dict()


def write_json(path: Path, obj) -> None:
    """JSON with NaN refused (it is not JSON), written atomically."""
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
    with atomic_write(path, encoding="utf-8") as f:
        f.write(text)


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


def make_source_dataset(
    images: np.ndarray,
    keypoints: np.ndarray,
    four_point: np.ndarray,
    batch_size: int,
    *,
    augment: dict | None = None,
    shuffle: bool = False,
    seed: int = 0,
):
    """:func:`make_dataset` whose inputs are ``(image, frame)``: ``frame`` (2, 2) is zero for
    a complete row and, for a four-keypoint row, the linear part of the row's augmentation
    (identity without one), which is how a labelling offset in the original image moves
    when the face is flipped, turned or scaled.

    The per-batch seeds and augmentation parameters are drawn exactly as
    :func:`fkd_core.augment.augment_dataset` draws them, so the frames match the warps.
    """
    import tensorflow as tf

    from fkd_core import augment as aug
    from fkd_core.targets import normalise_keypoints

    flags = np.asarray(four_point, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, keypoints.astype(np.float32), flags))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    identity = tf.eye(2, dtype=tf.float32)

    def plain(x, y, flag):
        frame = flag[:, None, None] * identity[None]
        return (_to_float_images(x), frame), y

    if augment is None:
        ds = ds.map(plain, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        config = aug.AugmentConfig.from_dict(augment)
        base = tf.constant(int(seed), tf.int64)

        def augmented(batch, step):
            x, y, flag = batch
            step = tf.ensure_shape(tf.cast(step, tf.int64), [2]) + tf.stack(
                [base, tf.constant(0, tf.int64)])
            x, y = aug.augment_batch(_to_float_images(x), y, step, config)
            linear = tf.tile(identity[None], [tf.shape(flag)[0], 1, 1])
            if config.geometric:
                param_seed, _ = tf.unstack(tf.random.experimental.stateless_split(
                    aug._seed_tensor(step), 2))
                p = aug._sample_params(tf.shape(flag)[0], param_seed, config)
                forward, _ = aug.affine_matrices(p["angle"], p["scale"], p["shift"], p["flip"])
                linear = forward[:, :, :2]
            return (x, flag[:, None, None] * linear), y

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda inputs, y: (inputs, normalise_keypoints(y)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def with_source_offset(model):
    """``model`` wrapped for training with a source offset: inputs (image, frame), output the
    model's keypoints plus ``frame · offset`` at every keypoint. The offset (normalised units)
    is the wrapper's only own weight, set by :func:`_source_offset_estimator`; the wrapped
    model is saved on its own."""
    import keras

    from fkd_core.keypoints import N_KEYPOINTS

    class SourceOffset(keras.layers.Layer):
        def build(self, input_shape):
            self.offset = self.add_weight(shape=(2,), initializer="zeros", name="offset",
                                          trainable=False)

        def call(self, inputs):
            pred, frame = inputs
            shift = keras.ops.einsum("bij,j->bi", frame, self.offset)
            return pred + keras.ops.tile(shift, [1, N_KEYPOINTS])

        def compute_output_shape(self, input_shapes):
            return input_shapes[0]

    image = keras.Input(shape=model.input_shape[1:], name="image")
    frame = keras.Input(shape=(2, 2), name="source_frame")
    layer = SourceOffset(name="source_offset", dtype="float32")
    wrapped = keras.Model([image, frame], layer([model(image), frame]), name=model.name)
    return wrapped, layer


def _source_offset_estimator(model, layer, images, targets, four_point, max_rows: int = 1024):
    """A Keras callback that re-estimates the source offset after every epoch.

    A gradient-trained offset moves along the same direction as the output biases (a
    constant shift of the four-keypoint rows is also a shift of every row plus a smaller
    shift of the complete ones), so descent splits the difference between the two and
    converges very slowly. The difference of the two sources' mean residuals at the
    keypoints both label cancels whatever bias the model has picked up: one update lands on
    the offset in expectation, and each later epoch refines it.
    """
    import keras

    from fkd_core.keypoints import ALWAYS_PRESENT
    from fkd_core.predict import predict_keypoints

    four_point = np.asarray(four_point, bool)
    if four_point.all() or not four_point.any():
        raise ValueError("--source-offset learn needs both complete and four-keypoint rows "
                         "among the training rows")
    rng = np.random.default_rng(0)
    rows = np.sort(rng.permutation(len(images))[:max_rows])
    images, targets, four_point = images[rows], targets[rows], four_point[rows]
    cols = column_indices(ALWAYS_PRESENT)

    class Estimator(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            offset = keras.ops.convert_to_numpy(layer.offset) * SCALE
            residual = (targets - predict_keypoints(model, images))[:, cols].reshape(
                len(images), -1, 2)
            residual[four_point] -= offset
            move = (np.nanmean(residual[four_point], axis=(0, 1))
                    - np.nanmean(residual[~four_point], axis=(0, 1)))
            layer.offset.assign((offset + move) / SCALE)

    return Estimator()


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


def _tensorboard(folder: Path) -> list:
    """Keras's TensorBoard callback writing each epoch's scalars under ``folder``, so
    ``tensorboard --logdir models/`` shows every run. Epoch scalars only: no graph, histograms
    or profiling, which cost time and disk on every run.

    Keras needs the ``tensorboard`` package (an fkd dependency) to write; an environment
    installed before it was one trains without the logs and says so once."""
    import importlib.util
    import warnings

    import keras

    if importlib.util.find_spec("tensorboard") is None:
        warnings.warn("no TensorBoard logs written: the tensorboard package is not installed "
                      "(pip install tensorboard)", stacklevel=3)
        return []
    return [keras.callbacks.TensorBoard(str(folder), histogram_freq=0, write_graph=False,
                                        update_freq="epoch", profile_batch=0)]


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


def trained_columns(config: TrainConfig) -> np.ndarray:
    """Which of the 30 target columns this run learns: all, or a specialist's keypoints."""
    trained = np.ones(len(COLUMN_NAMES), bool)
    if config.keypoints is not None:
        trained[:] = False
        trained[column_indices(config.keypoints)] = True
    return trained


def training_targets(data: KeypointSet, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(row positions to train on, targets) — a specialist sees only its keypoints' columns.

    A specialist trains on every row that labels its keypoints: for the four always-present
    keypoints that is every row, not just the complete ~30 %.
    """
    targets = data.keypoints.copy()
    targets[:, 0::2] -= config.label_offset or 0.0  # models learn pixel-index coordinates
    if config.keypoints is None:
        return np.arange(len(data)), targets
    targets[:, ~trained_columns(config)] = np.nan
    return data.rows_labelling(config.keypoints), targets


def pseudo_targets(data: KeypointSet, rows: np.ndarray, targets: np.ndarray,
                   config: TrainConfig, models_dir) -> np.ndarray:
    """The teacher's flip-TTA predictions for the labels ``rows`` lack, NaN wherever a real
    label exists (a guess never overrides a person's mark) and in the columns this run does
    not train; in the training targets' coordinates (label offset removed, as for labels).

    Most Kaggle rows label 4 of the 15 keypoints, so the other 11 learn from a third of the
    faces; a teacher's guesses let them learn, at a reduced weight, from all of them.
    """
    from fkd_core.runs import resolve

    teacher = resolve(config.pseudo_labels, models_dir)
    guess = teacher.predict(data.images[rows], tta=True)
    guess[:, 0::2] -= config.label_offset or 0.0
    missing = np.isnan(targets[rows]) & trained_columns(config)
    return np.where(missing, guess, np.nan).astype(np.float32)


def split_rows(data: KeypointSet, config: TrainConfig) -> dict[str, np.ndarray]:
    """Positions of the 'train', 'val' and 'holdout' rows: one seeded, stratified split.

    Validation rows steer training (early stopping, the plateau schedule) and ensemble
    weights, so their score is optimistic; hold-out rows are never looked at until the run
    is finished, and their score is the honest one.
    """
    train_pos, val_pos = data.split(config.val_fraction, config.seed)
    holdout = np.zeros(0, np.int64)
    if config.holdout_fraction > 0:
        rest = data.subset(train_pos)
        keep, held = rest.split(config.holdout_fraction / (1.0 - config.val_fraction),
                                config.seed + 1)
        train_pos, holdout = train_pos[keep], train_pos[held]
    return {"train": train_pos, "val": val_pos, "holdout": holdout}


@dataclass
class Scored:
    """One model's predictions (plain and flip-TTA, pixels) on some rows, with their truth."""

    row_ids: np.ndarray
    pred: np.ndarray
    pred_tta: np.ndarray
    truth: np.ndarray

    def take(self, row_ids: np.ndarray) -> Scored:
        idx = np.searchsorted(self.row_ids, row_ids)
        return Scored(row_ids, self.pred[idx], self.pred_tta[idx], self.truth[idx])


def score(model, data: KeypointSet, rows: np.ndarray, config: TrainConfig,
          targets: np.ndarray, source_offset: dict | None = None) -> Scored:
    """Predict ``rows`` with and without flip-TTA; NaN predictions are an error, not a score.

    A learned ``source_offset`` ({"dx", "dy"} pixels) is added to four-keypoint rows, whose
    labels follow that convention."""
    from fkd_core.predict import predict_keypoints

    images = data.images[rows]
    pred = predict_keypoints(model, images, label_offset=config.label_offset)
    pred_tta = predict_keypoints(model, images, tta=True, label_offset=config.label_offset)
    if source_offset:
        shift = np.tile([source_offset["dx"], source_offset["dy"]], 15).astype(np.float32)
        four = data.four_point[rows]
        pred[four] += shift
        pred_tta[four] += shift
    if not (np.isfinite(pred).all() and np.isfinite(pred_tta).all()):
        raise FloatingPointError("the trained model predicts NaN or infinity; try a lower --lr")
    truth = data.keypoints[rows].copy()
    if config.keypoints:  # a specialist is scored on its own keypoints only
        truth[np.isnan(targets[rows])] = np.nan
    return Scored(data.row_ids[rows], pred, pred_tta, truth)


def train(
    data: KeypointSet,
    config: TrainConfig,
    models_dir: str | os.PathLike = "models",
    *,
    run_id: str | None = None,
    verbose: int | str = "auto",
    extra_callbacks: Sequence = (),
    on_staged: Callable[[Path], None] | None = None,
    corrections: dict | None = None,
    recipe: dict | None = None,
    sweep: dict | None = None,
) -> Path | None:
    """Train one model on ``data`` and write its run folder; returns the folder's path, or
    None in a multi-worker training's non-chief worker (the chief writes the run;
    :mod:`fkd_core.distribute`).

    ``corrections`` describes a label corrections log already applied to ``data`` (path,
    hash, count: :func:`fkd_core.corrections.corrected`); the run records it, and
    ``recipe`` (the recipe file's path, hash and the merged options) likewise, and ``sweep``
    (the sweep's id and this trial's swept values, :mod:`fkd_core.sweeps`).

    With ``config.learn_source_offset`` the four-keypoint rows' labels may follow another
    convention than the complete rows': one (x, y) offset is learned for them alongside the
    model, recorded as config.json's ``source_offset`` (pixels) and added to their
    predictions (:attr:`fkd_core.runs.Run.source_offset`).
    """
    import keras

    from fkd_core import distribute
    from fkd_core.losses import MaskedMSE, MaskedRMSEPixels

    # First: a multi-worker strategy can only be made before TensorFlow runs anything.
    placement = distribute.prepare(config.strategy)
    distribute.check_precision(config.precision)
    if placement.workers > 1 and config.max_minutes:
        raise ValueError("--max-minutes cannot stop a multi-worker training: each worker's "
                         "clock would stop it after another epoch, and the others would wait "
                         "for it for ever")
    keras.utils.set_random_seed(config.seed)
    run_id = run_id or new_run_id(config.arch, config.head)
    if config.label_offset is None:
        from fkd_core.calibration import estimate_label_offset

        # With two labelling sources the complete rows are the reference convention; the
        # four-keypoint rows' own offset is learned on top of it.
        ref = data.complete if config.learn_source_offset else slice(None)
        config = dataclasses.replace(
            config, label_offset=estimate_label_offset(data.images[ref], data.keypoints[ref])
        )
    split = split_rows(data, config)
    usable, targets = training_targets(data, config)
    train_pos = np.intersect1d(split["train"], usable)
    val_pos_fit = np.intersect1d(split["val"], usable)
    if len(train_pos) == 0 or len(val_pos_fit) == 0:
        raise ValueError("no rows label the requested keypoints in the train or validation split")

    global_batch = placement.global_batch(config.batch_size)
    peak_lr = placement.scaled_lr(config.lr)
    folder = staged_run(models_dir, run_id) if placement.chief else distribute.throwaway_folder()
    with folder as staging:
        if on_staged and placement.chief:
            on_staged(staging)
        started = time.time()
        steps = config.steps_per_epoch or int(np.ceil(len(train_pos) / global_batch))
        with distribute.building(placement, config.precision):
            model = build_model(config)
            fit_model, offset_layer = (with_source_offset(model) if config.learn_source_offset
                                       else (model, None))
            if config.schedule == "cosine":
                lr = keras.optimizers.schedules.CosineDecay(
                    peak_lr, decay_steps=max(1, steps * config.epochs), alpha=0.02
                )
            else:
                lr = peak_lr
            optimizer = keras.optimizers.Adam(lr) if config.ema is None else keras.optimizers.Adam(
                lr, use_ema=True, ema_momentum=config.ema)
            fit_model.compile(optimizer=optimizer, loss=MaskedMSE(config.pseudo_weight),
                              metrics=[MaskedRMSEPixels()])
        fit_targets = targets[train_pos]
        if config.pseudo_labels:  # real labels, then the teacher's: moved alike by augmentation
            fit_targets = np.concatenate([fit_targets, pseudo_targets(
                data, train_pos, targets, config, models_dir)], axis=1)
        if offset_layer is None:
            train_ds = make_dataset(
                data.images[train_pos], fit_targets, global_batch,
                augment=config.augment, shuffle=True, seed=config.seed,
            )
            val_ds = make_dataset(data.images[val_pos_fit], targets[val_pos_fit], 256)
        else:
            four = data.four_point
            train_ds = make_source_dataset(
                data.images[train_pos], targets[train_pos], four[train_pos],
                global_batch, augment=config.augment, shuffle=True, seed=config.seed,
            )
            val_ds = make_source_dataset(data.images[val_pos_fit], targets[val_pos_fit],
                                         four[val_pos_fit], 256)
        val_steps = None
        if placement.workers > 1:  # every worker takes the same number of steps, or hangs
            train_ds, val_ds = distribute.shard_by_data(train_ds), distribute.shard_by_data(val_ds)
            val_ds, val_steps = val_ds.repeat(), int(np.ceil(len(val_pos_fit) / 256))
        if config.steps_per_epoch or placement.workers > 1:
            train_ds = train_ds.repeat()
        if offset_layer is not None:
            extra_callbacks = [_source_offset_estimator(
                model, offset_layer, data.images[train_pos], targets[train_pos],
                data.four_point[train_pos]), *extra_callbacks]
        callbacks = [
            # With EMA, validation, early stopping's best weights and the saved model are the
            # moving average's (swapped in at each epoch's end, out again for training).
            *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema else []),
            keras.callbacks.EarlyStopping(
                monitor="val_rmse_px", mode="min", patience=config.patience,
                restore_best_weights=True,
            ),
            keras.callbacks.CSVLogger(str(staging / "history.csv")),
            keras.callbacks.TerminateOnNaN(),
            *_tensorboard(staging / "tensorboard"),
            *extra_callbacks,
        ]
        if config.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor="val_rmse_px", mode="min", factor=0.5, patience=max(2, config.patience // 3)
            ))
        if config.max_minutes:
            callbacks.append(_time_budget(config.max_minutes))
        history = fit_model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs,
            steps_per_epoch=steps if placement.workers > 1 else config.steps_per_epoch,
            validation_steps=val_steps, callbacks=callbacks, verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles; Keras cannot shuffle a Dataset
        )
        train_seconds = time.time() - started
        if not np.all(np.isfinite(history.history.get("loss", [0.0]))):
            raise FloatingPointError("training diverged (loss became NaN); try a lower --lr")
        if placement.name != "default" or config.precision == "mixed":
            model = _plain_copy(model, config)
        model.save(staging / "model.keras")
        source_offset = None if offset_layer is None else {
            k: round(float(v) * SCALE, 4)
            for k, v in zip(("dx", "dy"), keras.ops.convert_to_numpy(offset_layer.offset))
        }

        val = score(model, data, split["val"], config, targets, source_offset)
        holdout = score(model, data, split["holdout"], config, targets, source_offset) if len(
            split["holdout"]) else None
        write_predictions(staging, val, holdout, train_row_ids=data.row_ids[train_pos])
        write_json(staging / "metrics.json", metrics_report(val, holdout))
        write_json(staging / "config.json", run_config(
            "single", run_id, arch=config.arch, model=model, label_offset=config.label_offset,
            train_seconds=train_seconds, epochs_run=len(history.history.get("loss", [])),
            data={
                "source": data.source, "fingerprint": data.fingerprint, "rows": len(data),
                "train_rows": int(len(train_pos)), "val_rows": int(len(split["val"])),
                "holdout_rows": int(len(split["holdout"])),
            },
            train=dataclasses.asdict(config),
            best_epoch=_best_epoch(history.history),
            wall_seconds=round(time.time() - started, 1),
            **({"corrections": corrections} if corrections else {}),
            **({"source_offset": source_offset} if source_offset else {}),
            **({"recipe": recipe} if recipe else {}),
            **({"sweep": sweep} if sweep else {}),
            distribute=placement.record(config.precision, config.batch_size, config.lr),
        ))
    return Path(models_dir) / run_id if placement.chief else None


def _plain_copy(model, config: TrainConfig):
    """The trained model as a float32 model outside any strategy, to save and score: it
    loads and predicts the same on any machine, and scoring needs no other worker."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_model(config)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _best_epoch(history: dict) -> int | None:
    val = history.get("val_rmse_px")
    return int(np.nanargmin(val)) + 1 if val else None


def write_predictions(folder: Path, val: Scored, holdout: Scored | None = None,
                      train_row_ids: np.ndarray | None = None) -> None:
    """``val_predictions.npz``: the validation rows' predictions (and the hold-out rows',
    prefixed ``holdout_``), so ensembles and the dashboard never predict them again, and the
    rows the model was fitted on, so anyone can check that none of them is scored."""
    arrays = {} if train_row_ids is None else {"train_row_ids": np.asarray(train_row_ids)}
    for prefix, part in (("", val), ("holdout_", holdout)):
        if part is not None:
            arrays.update({
                f"{prefix}row_ids": np.asarray(part.row_ids),
                f"{prefix}pred": part.pred.astype(np.float32),
                f"{prefix}pred_tta": part.pred_tta.astype(np.float32),
                f"{prefix}truth": np.asarray(part.truth, np.float32),
            })
    with atomic_write(folder / "val_predictions.npz", "wb") as f:
        np.savez(f, **arrays)


def read_scored(val_predictions: dict, prefix: str = "") -> Scored | None:
    """The :class:`Scored` rows kept in a run's ``val_predictions.npz`` (None if absent)."""
    if f"{prefix}row_ids" not in val_predictions:
        return None
    return Scored(*(val_predictions[f"{prefix}{k}"]
                    for k in ("row_ids", "pred", "pred_tta", "truth")))


def _finite_or_none(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.atleast_1d(values)]


def metrics_report(val: Scored, holdout: Scored | None = None) -> dict:
    """metrics.json: validation RMSE overall and per keypoint in pixels, plain and with
    flip-TTA, and the untouched hold-out rows' RMSE where there are any.

    A keypoint no validation row labels has RMSE null (JSON has no NaN).
    """
    out = {
        "val_rmse": _finite_or_none(metrics.rmse(val.pred, val.truth))[0],
        "val_rmse_tta": _finite_or_none(metrics.rmse(val.pred_tta, val.truth))[0],
        "per_keypoint": dict(zip(KEYPOINT_NAMES, _finite_or_none(
            metrics.per_keypoint_rmse(val.pred, val.truth)))),
        "per_keypoint_tta": dict(zip(KEYPOINT_NAMES, _finite_or_none(
            metrics.per_keypoint_rmse(val.pred_tta, val.truth)))),
        "val_images": int(len(val.truth)),
        "labelled_values": int(np.isfinite(val.truth).sum()),
        "columns": list(COLUMN_NAMES),
    }
    if holdout is not None:
        out["holdout_rmse"] = _finite_or_none(metrics.rmse(holdout.pred, holdout.truth))[0]
        out["holdout_rmse_tta"] = _finite_or_none(
            metrics.rmse(holdout.pred_tta, holdout.truth))[0]
        out["holdout_images"] = int(len(holdout.truth))
    return out
