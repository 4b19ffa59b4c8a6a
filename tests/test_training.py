"""Training, runs, evaluation, submission, specialists and ensembles — with real tiny models."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import metrics, runs
from fkd_core.cli import app
from fkd_core.composite import make_ensemble, specialist_groups, train_specialists
from fkd_core.evaluation import evaluate, submission
from fkd_core.keypoints import ALWAYS_PRESENT, COLUMN_NAMES, KEYPOINT_NAMES
from fkd_core.predict import predict_keypoints
from fkd_core.training import TrainConfig, train

runner = CliRunner()
TINY = dict(arch="simple", head="regression", epochs=1, batch_size=16, steps_per_epoch=3,
            val_fraction=0.25)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def base_run(data, models):
    config = TrainConfig(**TINY, augment={})
    return runs.resolve(train(data.train, config, models, run_id="base", verbose=0))


def test_run_folder_is_complete(base_run, data):
    files = {p.name for p in base_run.path.iterdir()}
    assert set(runs.REQUIRED) | {"history.csv"} <= files
    config = base_run.config
    assert config["train"]["arch"] == "simple" and config["train"]["batch_size"] == 16
    assert config["train"]["augment"]["flip_prob"] == 0.5  # the full augmentation config
    assert config["data"]["fingerprint"] == data.train.fingerprint
    assert config["fkd_version"] and config["wall_seconds"] > 0 and config["epochs_run"] == 1
    assert config["train"]["label_offset"] == 0.0  # demo labels follow Kaggle's convention
    with open(base_run.path / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 1 and "val_rmse_px" in history[0]
    m = base_run.metrics
    assert set(m["per_keypoint"]) == set(KEYPOINT_NAMES)
    vp = base_run.val_predictions
    assert vp["pred"].shape == (m["val_images"], 30) == vp["truth"].shape
    assert m["val_rmse"] == pytest.approx(metrics.rmse(vp["pred"], vp["truth"]))
    # Every validation row is in the data, and none of them was trained on: the rows the
    # model was fitted on are recorded by the training loop itself.
    n_val = round(len(data.train) * 0.25)
    assert abs(len(vp["row_ids"]) - n_val) <= 1
    fitted = set(vp["train_row_ids"].tolist())
    assert fitted and not fitted & set(vp["row_ids"].tolist())
    assert fitted | set(vp["row_ids"].tolist()) == set(data.train.row_ids.tolist())


def test_saved_model_reproduces_validation_predictions(base_run, data):
    model = base_run.load_model()
    rows = base_run.val_predictions["row_ids"]
    again = predict_keypoints(model, data.train.images[rows])
    np.testing.assert_allclose(again, base_run.val_predictions["pred"], atol=1e-3)
    ev = evaluate(base_run, data.train, subset="val", model=model)
    assert ev.rmse == pytest.approx(base_run.metrics["val_rmse"], rel=1e-4)


def _mirror_by_name(keypoints: np.ndarray) -> np.ndarray:
    """The flip written out by keypoint names, independently of fkd_core.keypoints."""
    names = list(KEYPOINT_NAMES)
    out = np.empty_like(keypoints)
    for i, name in enumerate(names):
        partner = name.replace("left", "@").replace("right", "left").replace("@", "right")
        j = names.index(partner)
        out[:, 2 * i] = 95.0 - keypoints[:, 2 * j]
        out[:, 2 * i + 1] = keypoints[:, 2 * j + 1]
    return out


def test_flip_tta_averages_with_the_mirrored_and_swapped_prediction(base_run, data):
    """TTA = mean of the plain prediction and the mirror of the mirrored face's prediction,
    its left/right names exchanged; dropping the exchange (or the mirror) fails this."""
    model = base_run.load_model()
    images = data.train.images[:8]
    plain = predict_keypoints(model, images)
    of_mirror = predict_keypoints(model, images[:, :, ::-1])
    tta = predict_keypoints(model, images, tta=True)
    np.testing.assert_allclose(tta, 0.5 * (plain + _mirror_by_name(of_mirror)), atol=1e-3)
    # The exchange matters for this model: without it the average would differ.
    unswapped = of_mirror.copy()
    unswapped[:, 0::2] = 95.0 - unswapped[:, 0::2]
    assert np.abs(0.5 * (plain + unswapped) - tta).max() > 0.1


def test_submission_matches_lookup(base_run, data, tmp_path, demo_dir, models):
    out = tmp_path / "submission.csv"
    result = runner.invoke(app, ["submit", "base", "--data", str(demo_dir), "--models",
                                 str(models), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["RowId", "Location"]
    assert [int(r[0]) for r in rows[1:]] == data.lookup.RowId.tolist()
    values = np.array([float(r[1]) for r in rows[1:]])
    # Each value is the model's flip-TTA prediction for that image and feature, moved onto
    # the image's edge (half a pixel beyond the outer pixel centres) where it falls outside.
    pred = base_run.predict(data.test.images, tta=True)
    image = {image_id: i for i, image_id in enumerate(data.test.image_ids)}
    column = {name: i for i, name in enumerate(COLUMN_NAMES)}
    raw = np.array([pred[image[i], column[f]] for i, f in
                    zip(data.lookup.ImageId, data.lookup.FeatureName)])
    inside = (raw > -0.5) & (raw < 95.5)
    assert inside.any() and (~inside).any()  # the tiny model strays off the image
    np.testing.assert_allclose(values[inside], raw[inside], atol=1e-4)
    np.testing.assert_allclose(values[~inside], np.where(raw[~inside] < 0, -0.5, 95.5))


def test_evaluate_cli(base_run, demo_dir, models):
    result = runner.invoke(app, ["evaluate", "base", "--data", str(demo_dir), "--models",
                                 str(models), "--worst", "3"])
    assert result.exit_code == 0, result.output
    assert f"RMSE {base_run.metrics['val_rmse']:.3f} px" in result.output
    for name in KEYPOINT_NAMES:
        assert name in result.output


def test_ema_saves_the_moving_average_of_the_weights(data, tmp_path):
    """With --ema the saved model is the weights' moving average, not the last step's. Keras
    starts the average at the weights after the first step; at a momentum of 0.9999 the
    saved model must still be those, while the training itself went on moving them."""

    class Steps(keras.callbacks.Callback):  # the trainable weights after each step
        first = last = None

        def on_train_batch_end(self, batch, logs=None):
            self.last = [w.numpy().copy() for w in self.model.trainable_weights]
            if self.first is None:
                self.first = self.last

    def distance(a, b) -> float:
        return sum(float(np.abs(x - y).sum()) for x, y in zip(a, b))

    steps = Steps()
    config = TrainConfig(**dict(TINY, epochs=2, lr=0.01, augment={}), ema=0.9999)
    run = runs.resolve(train(data.train, config, tmp_path, run_id="ema", verbose=0,
                             extra_callbacks=[steps]))
    saved = [w.numpy() for w in run.load_model().trainable_weights]
    assert run.config["train"]["ema"] == 0.9999
    went_on = distance(steps.last, steps.first)
    assert went_on > 0
    assert distance(saved, steps.first) < 0.01 * went_on, (distance(saved, steps.first), went_on)
    assert np.isfinite(run.val_rmse)
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(**TINY, ema=1.0)


def test_pseudo_labels_fill_only_missing_labels_from_the_teacher(base_run, data, models):
    """The student's extra targets are the teacher's flip-TTA predictions exactly where a
    training face lacks a label, and the run records its teacher and weight."""
    from fkd_core.training import pseudo_targets, split_rows, training_targets

    config = TrainConfig(**TINY, augment={}, pseudo_labels="base", pseudo_weight=0.3,
                         label_offset=0.0)
    rows = split_rows(data.train, config)["train"]
    _, targets = training_targets(data.train, config)
    guess = pseudo_targets(data.train, rows, targets, config, models)
    missing = np.isnan(targets[rows])
    assert missing.any() and (~missing).any()
    assert np.isnan(guess[~missing]).all()
    np.testing.assert_allclose(guess[missing], base_run.predict(
        data.train.images[rows], tta=True)[missing], atol=1e-4)
    run = runs.resolve(train(data.train, config, models, run_id="student", verbose=0))
    assert run.config["train"]["pseudo_labels"] == "base"
    assert run.config["train"]["pseudo_weight"] == 0.3
    assert np.isfinite(run.val_rmse)
    with pytest.raises(ValueError, match="pseudo_weight must be in"):
        TrainConfig(**TINY, pseudo_weight=0.0)
    with pytest.raises(runs.RunError):
        train(data.train, TrainConfig(**TINY, pseudo_labels="no-such-run"), models,
              run_id="orphan", verbose=0)


def test_keyboard_interrupt_leaves_no_run(data, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data.train, TrainConfig(**TINY), tmp_path, run_id="killed", verbose=0,
              extra_callbacks=[Interrupt()])
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # no run, no staging folder
    assert runs.list_runs(tmp_path) == []
    assert runs.stale_staging(tmp_path, include_live=True) == []


def test_sigterm_mid_training_leaves_no_run(demo_dir, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(demo_dir), "--arch",
         "simple", "--head", "regression", "--epochs", "500", "--batch-size", "8",
         "--models", str(tmp_path), "--run-id", "victim"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    deadline = time.monotonic() + 120

    def history():
        found = list(tmp_path.glob(".incomplete-victim-*/history.csv"))
        return found[0] if found and found[0].stat().st_size else None

    while history() is None:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "training never got going"
        time.sleep(0.2)
    staging = history().parent
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "no run was saved" in output
    assert not (tmp_path / "victim").exists()
    assert not staging.exists()


def test_corrupt_model_is_listed_as_broken(base_run, tmp_path):
    import shutil

    copy = tmp_path / "broken-run"
    shutil.copytree(base_run.path, copy)
    raw = (copy / "model.keras").read_bytes()
    (copy / "model.keras").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "half-run").mkdir()
    (tmp_path / "half-run" / "config.json").write_text("{}")
    found = {r.id: r for r in runs.list_runs(tmp_path)}
    assert "model.keras is not a valid Keras file" in found["broken-run"].error
    assert "missing model.keras" in found["half-run"].error
    result = runner.invoke(app, ["runs", "--models", str(tmp_path)])
    assert result.exit_code == 0
    assert "broken broken-run: model.keras is not a valid Keras file" in result.output
    with pytest.raises(ValueError, match="broken"):
        runs.resolve("broken-run", tmp_path)


def test_specialists_combine_into_one_run(base_run, data, models):
    assert len(specialist_groups("keypoint")) == 15
    path = train_specialists(data.train, base_run, by="group", models_dir=models, epochs=1,
                             steps_per_epoch=2, run_id="spec", verbose=0)
    spec = runs.resolve(path)
    assert spec.kind == "specialists"
    assert spec.config["specialists"]["nose"] == ["nose_tip"]
    assert spec.config["base_run"] == "base"
    # The always-present keypoints' specialist trains on every training row, the eyes' only
    # on complete rows.
    nested = {
        name: json.loads((path / "specialists" / name / "config.json").read_text())
        for name in ("nose", "eyes")
    }
    assert nested["nose"]["data"]["train_rows"] == base_run.config["data"]["train_rows"]
    complete_train = nested["eyes"]["data"]["train_rows"]
    assert 0 < complete_train < nested["nose"]["data"]["train_rows"]
    assert set(ALWAYS_PRESENT) >= {"nose_tip"}
    # Its one model.keras reproduces its recorded validation predictions.
    rows = spec.val_predictions["row_ids"]
    again = predict_keypoints(spec.load_model(), data.train.images[rows])
    np.testing.assert_allclose(again, spec.val_predictions["pred"], atol=1e-3)
    assert submission(spec, data).shape == (len(data.lookup), 2)


def test_ensemble_auto_weights(base_run, data, models):
    other = runs.resolve(train(data.train, TrainConfig(**{**TINY, "arch": "alexnet",
                                                          "width": 0.125}),
                               models, run_id="other", verbose=0))
    path = make_ensemble([base_run, other], weights="auto", models_dir=models, run_id="ens")
    ens = runs.resolve(path)
    inv = np.array([1 / base_run.val_rmse**2, 1 / other.val_rmse**2])
    np.testing.assert_allclose(ens.config["weights"], inv / inv.sum(), rtol=1e-6)
    images = data.train.images[:5]
    w = ens.config["weights"]
    expected = (w[0] * predict_keypoints(base_run.load_model(), images)
                + w[1] * predict_keypoints(other.load_model(), images))
    np.testing.assert_allclose(predict_keypoints(ens.load_model(), images), expected, atol=1e-3)
    assert ens.metrics["val_rmse"] == pytest.approx(
        metrics.rmse(ens.val_predictions["pred"], ens.val_predictions["truth"])
    )


def test_train_cli_rejects_bad_options(demo_dir, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(demo_dir), "--arch", "nope",
                                 "--models", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown architecture 'nope'" in result.output
    result = runner.invoke(app, ["train", "--data", str(demo_dir), "--aug", "flip_prob=2",
                                 "--models", str(tmp_path)])
    assert result.exit_code == 1 and "flip_prob" in result.output
    assert not any(Path(tmp_path).iterdir())


def test_label_offset_is_learned_in_index_space_and_added_back(data, tmp_path):
    """Labels 1 px right of the index convention: the same training on the shifted labels
    must predict exactly 1 px further right than on the originals. Forgetting to take the
    offset out (or to add it back) moves that difference to 2 px (or 0 px)."""
    shifted = data.train.subset(np.arange(len(data.train)))
    shifted.keypoints = shifted.keypoints.copy()
    shifted.keypoints[:, 0::2] += 1.0
    config = TrainConfig(**{**TINY, "augment": None})
    run = runs.resolve(train(shifted, config, tmp_path, run_id="offset", verbose=0))
    plain = runs.resolve(train(data.train, config, tmp_path, run_id="plain", verbose=0))
    assert run.label_offset == pytest.approx(1.0, abs=0.2)
    assert plain.label_offset == 0.0
    images = shifted.images[:16]
    dx = run.predict(images)[:, 0::2] - plain.predict(images)[:, 0::2]
    dy = run.predict(images)[:, 1::2] - plain.predict(images)[:, 1::2]
    assert np.median(dx) == pytest.approx(1.0, abs=0.3)
    assert np.median(np.abs(dy)) < 0.3


def test_time_budget_stops_after_the_epoch_that_used_it_up(data, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 5, "max_minutes": 1e-6})
    run = runs.resolve(train(data.train, config, tmp_path, run_id="budget", verbose=0))
    assert run.config["epochs_run"] == 1
