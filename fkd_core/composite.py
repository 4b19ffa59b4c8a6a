"""Runs made of other runs — specialists and ensembles — as one Keras graph each.

Building the combination as a single functional model means a composite run has a plain
``model.keras`` like any other: it loads with ``safe_mode=True``, predicts in one call, and
``evaluate``, ``submit`` and the dashboard need not know it is a composite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from fkd_core.architectures import INPUT_SHAPE
from fkd_core.keypoints import N_COORDS


@keras.saving.register_keras_serializable(package="fkd")
class PickColumns(layers.Layer):
    """Column c of the output comes from input ``source[c]``: specialists' predictions merged."""

    def __init__(self, source, **kwargs):
        super().__init__(**kwargs)
        self.source = [int(s) for s in source]
        if len(self.source) != N_COORDS:
            raise ValueError(f"source must name an input for each of {N_COORDS} columns")

    def call(self, inputs):
        stacked = ops.stack(inputs, axis=1)  # (batch, n_inputs, 30)
        onehot = np.zeros((len(inputs), N_COORDS), np.float32)
        onehot[self.source, np.arange(N_COORDS)] = 1.0
        return ops.sum(stacked * ops.convert_to_tensor(onehot)[None], axis=1)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], N_COORDS)

    def get_config(self):
        return {**super().get_config(), "source": self.source}


def _renamed(model: keras.Model, name: str) -> keras.Model:
    model.name = name
    return model


def combine_specialists(models: Sequence[keras.Model], source: Sequence[int]) -> keras.Model:
    """One model whose column c is predicted by ``models[source[c]]``."""
    used = sorted(set(int(s) for s in source))
    image = keras.Input(shape=INPUT_SHAPE, name="image")
    outputs = [_renamed(models[i], f"specialist_{i}")(image) for i in used]
    remap = [used.index(int(s)) for s in source]
    merged = PickColumns(remap, name="keypoints")(outputs)
    return keras.Model(image, merged, name="specialists")


def ensemble(models: Sequence[keras.Model], weights: Sequence[float]) -> keras.Model:
    """Weighted average of members' predictions (weights are normalised to sum to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(models) or len(models) < 1 or (w < 0).any() or w.sum() <= 0:
        raise ValueError("ensemble needs one non-negative weight per member, not all zero")
    w = w / w.sum()
    image = keras.Input(shape=INPUT_SHAPE, name="image")
    parts = [
        layers.Rescaling(float(wi), name=f"weight_{i}")(_renamed(m, f"member_{i}")(image))
        for i, (m, wi) in enumerate(zip(models, w))
    ]
    out = parts[0] if len(parts) == 1 else layers.Add(name="keypoints")(parts)
    return keras.Model(image, out, name="ensemble")


# --------------------------------------------------------------------------------------
# Composite runs


def specialist_groups(by: str) -> dict[str, tuple[str, ...]]:
    """Which keypoints each specialist predicts: one per keypoint, or one per group."""
    from fkd_core.keypoints import GROUPS, KEYPOINT_NAMES

    if by == "keypoint":
        return {name: (name,) for name in KEYPOINT_NAMES}
    if by == "group":
        return dict(GROUPS)
    raise ValueError(f"--by must be 'keypoint' or 'group', not {by!r}")


def train_specialists(data, base, *, by: str = "group", models_dir="models", epochs: int = 10,
                      lr: float = 3e-4, patience: int = 5, run_id: str | None = None,
                      verbose="auto", **overrides):
    """Fine-tune one copy of ``base`` per keypoint or group; combine them into one run.

    Each specialist starts from the base run's weights (transfer), keeps its split (so no
    validation or hold-out face is trained on) and trains on every row labelling its
    keypoints.
    """
    import dataclasses
    import time

    from fkd_core import training
    from fkd_core.keypoints import column_indices
    from fkd_core.run_schema import new_run_id, run_config
    from fkd_core.runs import read_run, staged_run

    groups = specialist_groups(by)
    base_cfg = training.TrainConfig(**dict(base.config.get("train") or {}))
    cfg = dataclasses.replace(
        base_cfg, epochs=epochs, lr=lr, patience=patience, init_from=str(base.path),
        max_minutes=None, **overrides,
    )
    run_id = run_id or new_run_id("specialists", by)
    started = time.time()
    with staged_run(models_dir, run_id) as staging:
        members, source, parts = [], np.zeros(N_COORDS, int), []
        epochs_run = 0
        for i, (name, keypoints) in enumerate(groups.items()):
            spec_cfg = dataclasses.replace(cfg, keypoints=list(keypoints))
            path = training.train(
                data, spec_cfg, staging / "specialists", run_id=name, verbose=verbose
            )
            member = read_run(path)  # the registry's reader, as for any run
            members.append(member.load_model())
            source[column_indices(keypoints)] = i
            saved = member.val_predictions
            parts.append((training.read_scored(saved), training.read_scored(saved, "holdout_")))
            epochs_run += member.config.get("epochs_run") or 0
            (path / "model.keras").unlink()  # its weights live on in the combined model
        model = combine_specialists(members, source)
        model.save(staging / "model.keras")

        def pick(which: int):
            """Each coordinate from the specialist that predicts it."""
            if parts[0][which] is None:
                return None
            scored = [p[which] for p in parts]
            cols = np.arange(N_COORDS)
            row_ids = scored[0].row_ids
            truth = data.keypoints[np.searchsorted(data.row_ids, row_ids)]
            return training.Scored(
                row_ids, np.stack([s.pred for s in scored])[source, :, cols].T,
                np.stack([s.pred_tta for s in scored])[source, :, cols].T, truth)

        val, holdout = pick(0), pick(1)
        training.write_predictions(staging, val, holdout)
        training.write_json(staging / "metrics.json", training.metrics_report(val, holdout))
        training.write_json(staging / "config.json", run_config(
            "specialists", run_id, arch=f"specialists({base.arch})", model=model,
            label_offset=base.label_offset, train_seconds=time.time() - started,
            epochs_run=epochs_run, data=base.config.get("data", {}),
            by=by, base_run=base.id,
            specialists={name: list(kps) for name, kps in groups.items()},
            train=dataclasses.asdict(cfg),
            split={"val_fraction": cfg.val_fraction, "holdout_fraction": cfg.holdout_fraction,
                   "seed": cfg.seed},
        ))
    return Path(models_dir) / run_id


def ensemble_weights(runs, row_ids: np.ndarray, mode: str) -> np.ndarray:
    """Equal weights, or 'auto': inverse squared validation RMSE on the shared rows (never
    the hold-out rows, which stay untouched)."""
    from fkd_core import metrics

    if mode == "equal":
        return np.ones(len(runs))
    if mode != "auto":
        try:
            return np.array([float(w) for w in mode.split(",")])
        except ValueError:
            raise ValueError(f"--weights must be equal, auto or numbers, not {mode!r}") from None
    errs = []
    for r in runs:
        vp = r.val_predictions
        idx = np.searchsorted(vp["row_ids"], row_ids)
        errs.append(metrics.rmse(vp["pred"][idx], vp["truth"][idx]))
    return 1.0 / np.square(np.array(errs))


def _shared(scored: list) -> np.ndarray:
    """Row ids every member scored (empty if any member has none)."""
    if any(s is None for s in scored):
        return np.zeros(0, np.int64)
    shared = scored[0].row_ids
    for s in scored[1:]:
        shared = np.intersect1d(shared, s.row_ids)
    return shared


def make_ensemble(runs, *, weights: str = "equal", models_dir="models",
                  run_id: str | None = None):
    """Average runs into a new run, scored on the validation (and hold-out) rows all members
    share."""
    import time

    from fkd_core.run_schema import new_run_id, run_config
    from fkd_core.runs import staged_run
    from fkd_core.training import (
        Scored,
        metrics_report,
        read_scored,
        write_json,
        write_predictions,
    )

    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    prints = {r.config.get("data", {}).get("fingerprint") for r in runs}
    if len(prints) != 1:
        raise ValueError("ensemble members were trained on different data")
    offsets = {r.label_offset for r in runs}
    if len(offsets) != 1:
        raise ValueError("ensemble members were trained with different label offsets")
    vals = [read_scored(r.val_predictions) for r in runs]
    holdouts = [read_scored(r.val_predictions, "holdout_") for r in runs]
    shared = _shared(vals)
    if len(shared) == 0:
        raise ValueError("the runs share no validation rows (different splits); cannot score")
    w = ensemble_weights(runs, shared, weights)
    if len(w) != len(runs) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"--weights needs {len(runs)} comma-separated non-negative numbers, "
                         "'auto' or 'equal'")
    w = w / w.sum()

    def average(scored: list, rows: np.ndarray) -> Scored | None:
        if len(rows) == 0:
            return None
        taken = [s.take(rows) for s in scored]
        return Scored(rows, sum(wi * t.pred for wi, t in zip(w, taken)),
                      sum(wi * t.pred_tta for wi, t in zip(w, taken)), taken[0].truth)

    # The members' four-keypoint offsets average like their predictions do.
    offset = sum(wi * r.source_offset.astype(np.float64) for wi, r in zip(w, runs))
    started = time.time()
    run_id = run_id or new_run_id("ensemble")
    with staged_run(models_dir, run_id) as staging:
        model = ensemble([r.load_model() for r in runs], w)
        model.save(staging / "model.keras")
        val, holdout = average(vals, shared), average(holdouts, _shared(holdouts))
        write_predictions(staging, val, holdout)
        write_json(staging / "metrics.json", metrics_report(val, holdout))
        first = runs[0].config
        write_json(staging / "config.json", run_config(
            "ensemble", run_id, arch="ensemble(" + ",".join(r.arch for r in runs) + ")",
            model=model, label_offset=runs[0].label_offset,
            train_seconds=time.time() - started, epochs_run=None,
            data=first.get("data", {}),
            members=[r.id for r in runs], weights=w.tolist(), weight_mode=weights,
            **({"source_offset": dict(zip(("dx", "dy"), offset.round(4).tolist()))}
               if offset.any() else {}),
            split=first.get("split") or {
                k: (first.get("train") or {}).get(k)
                for k in ("val_fraction", "holdout_fraction", "seed")
            },
        ))
    return Path(models_dir) / run_id
