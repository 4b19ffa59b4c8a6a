"""Run folders as untrusted input, and making them safely: ids, staging, schema, leftovers,
models that do not load or answer NaN, hold-out rows, settings — with real tiny runs."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import metrics, runs
from fkd_core.cli import app
from fkd_core.composite import make_ensemble
from fkd_core.evaluation import evaluate
from fkd_core.training import TrainConfig, train

runner = CliRunner()
TINY = dict(arch="simple", head="regression", epochs=1, batch_size=16, steps_per_epoch=2,
            val_fraction=0.25)
TINY_CLI = ["--arch", "simple", "--head", "regression", "--epochs", "1", "--batch-size", "16",
            "--steps-per-epoch", "2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def good(data, models):
    """A run trained with an untouched hold-out set."""
    config = TrainConfig(**TINY, holdout_fraction=0.2)
    return runs.resolve(train(data.train, config, models, run_id="good", verbose=0))


def _copy_run(run, dest: Path, name: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run.path, dest / name))


def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


# -- run ids ---------------------------------------------------------------------------


def test_bad_run_id_never_deletes_outside_the_models_folder(demo_dir, tmp_path):
    models = tmp_path / "models"
    (models / ".incomplete-a").mkdir(parents=True)  # a killed run's leftovers
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    old_cwd = os.getcwd()
    os.chdir(models)  # ./victim relative to where the user stands
    try:
        result = runner.invoke(app, ["train", "--data", str(demo_dir), *TINY_CLI, "--models",
                                     str(models), "--run-id", "a/../../victim"])
    finally:
        os.chdir(old_cwd)
    assert result.exit_code == 1
    assert "invalid run id 'a/../../victim'" in result.output
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (models / ".incomplete-a").is_dir()


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/b", "<script>alert(1)</script>",
                                 "x" * 250, ".hidden", "_under", "", "a b"])
def test_every_command_names_a_bad_run_id(bad, demo_dir, tmp_path):
    for args in (["train", "--data", str(demo_dir), *TINY_CLI, "--run-id", bad],
                 ["ensemble", "r1", "r2", "--run-id", bad],
                 ["train-specialists", "--base", "r1", "--run-id", bad]):
        result = runner.invoke(app, [*args, "--models", str(tmp_path)])
        assert result.exit_code == 1, (args, result.output)
        assert "invalid run id" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(app, ["evaluate", bad or "''", "--models", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_staging_never_removes_a_folder_it_did_not_make(tmp_path):
    other = tmp_path / ".incomplete-r"
    other.mkdir()
    (other / "history.csv").write_text("another process's work")
    with pytest.raises(RuntimeError), runs.staged_run(tmp_path, "r") as staging:
        assert staging != other and staging.name.startswith(".incomplete-r-")
        (staging / "x").write_text("mine")
        raise RuntimeError("training failed")
    assert (other / "history.csv").read_text() == "another process's work"
    assert not staging.exists() and not (tmp_path / "r").exists()


def test_same_id_twice_is_refused_and_the_first_run_survives(data, tmp_path):
    with runs.staged_run(tmp_path, "same") as first:
        (first / "history.csv").write_text("first")
        with pytest.raises(FileExistsError, match="being made by another process"):
            train(data.train, TrainConfig(**TINY), tmp_path, run_id="same", verbose=0)
        assert (first / "history.csv").read_text() == "first"
    assert (tmp_path / "same" / "history.csv").read_text() == "first"


def test_final_rename_never_overwrites(tmp_path):
    with pytest.raises(FileExistsError, match="appeared"), \
            runs.staged_run(tmp_path, "r") as staging:
        (staging / "model.keras").write_text("new")
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "model.keras").write_text("old")
    assert (tmp_path / "r" / "model.keras").read_text() == "old"
    assert not staging.exists()


# -- config.json and metrics.json ------------------------------------------------------


@pytest.mark.parametrize("file,changes,reason", [
    ("config.json", {"train_seconds": "abc"}, "train_seconds must be a number"),
    ("metrics.json", {"val_rmse": "<b>bad</b>"}, "val_rmse must be a number"),
    ("config.json", {"label_offset": 1e9}, "label_offset must be between"),
    ("metrics.json", {"val_rmse": float("nan")}, "val_rmse must be between"),
    ("config.json", {"train": [1, 2]}, "train must be a JSON object"),
    ("config.json", {"kind": "rootkit"}, "kind must be one of"),
    ("config.json", {"data": {"fingerprint": 5}}, "fingerprint must be text"),
    ("metrics.json", {"per_keypoint": {"nose_tip": "x"}}, "nose_tip must be a number"),
])
def test_bad_json_marks_the_run_broken_and_the_rest_still_list(good, tmp_path, file, changes,
                                                              reason):
    bad = _copy_run(good, tmp_path, "bad")
    _copy_run(good, tmp_path, "fine")
    _edit_json(bad / file, **changes)
    found = {r.id: r for r in runs.list_runs(tmp_path)}
    assert found["fine"].ok
    assert reason in found["bad"].error and file in found["bad"].error
    result = runner.invoke(app, ["runs", "--models", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "broken bad:" in result.output and reason in " ".join(result.output.split())
    assert "fine" in result.output.split("broken")[0]


def test_json_that_is_not_an_object_is_broken(good, tmp_path):
    bad = _copy_run(good, tmp_path, "list")
    (bad / "config.json").write_text("[1, 2, 3]")
    (found,) = runs.list_runs(tmp_path)
    assert "config.json: must hold a JSON object, not list" in found.error


# -- model files -------------------------------------------------------------------------


def test_zip_with_bogus_graph_and_weights_is_broken(good, tmp_path):
    bad = _copy_run(good, tmp_path, "bogus")
    with zipfile.ZipFile(bad / "model.keras", "w") as zf:
        zf.writestr("config.json", json.dumps({"module": "os", "class_name": "system"}))
        zf.writestr("model.weights.h5", b"not hdf5")
    (found,) = runs.list_runs(tmp_path)
    assert "not a saved Keras model" in found.error
    result = runner.invoke(app, ["evaluate", "bogus", "--models", str(tmp_path)])
    assert result.exit_code == 1 and "bogus is broken" in result.output


def test_a_model_that_does_not_load_is_a_named_error(good, data, tmp_path, demo_dir):
    """Well-formed zip, wrong weights: loading fails inside Keras; the CLI names the run."""
    other = train(data.train, TrainConfig(**{**TINY, "arch": "alexnet", "width": 0.125}),
                  tmp_path / "m", run_id="alex", verbose=0)
    bad = _copy_run(good, tmp_path, "mismatch")
    with zipfile.ZipFile(bad / "model.keras") as zf:
        graph = zf.read("config.json")
        meta = {n: zf.read(n) for n in zf.namelist() if not n.endswith(".h5")}
    with zipfile.ZipFile(other / "model.keras") as zf:
        weights = {n: zf.read(n) for n in zf.namelist() if n.endswith(".h5")}
    with zipfile.ZipFile(bad / "model.keras", "w") as zf:
        for name, raw in {**meta, "config.json": graph, **weights}.items():
            zf.writestr(name, raw)
    assert runs.read_run(bad).ok  # structurally fine: only loading can tell
    with pytest.raises(runs.RunError, match="mismatch is broken: model.keras does not load"):
        runs.read_run(bad).load_model()
    result = runner.invoke(app, ["evaluate", "mismatch", "--data", str(demo_dir), "--models",
                                 str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "model.keras does not load" in result.output


def _nan_run(good, tmp_path: Path) -> runs.Run:
    path = _copy_run(good, tmp_path, "nan")
    model = good.load_model()
    last = [layer for layer in model.layers if layer.weights][-1]
    last.set_weights([np.full_like(w, np.nan) for w in last.get_weights()])
    model.save(path / "model.keras")
    return runs.read_run(path)


def test_a_model_that_answers_nan_is_broken_not_scored(good, data, tmp_path, demo_dir):
    run = _nan_run(good, tmp_path)
    with pytest.raises(runs.RunError, match="predicts NaN or infinity for 5 of 5 faces"):
        run.predict(data.train.images[:5])
    for cmd in (["evaluate", "nan", "--data", str(demo_dir)],
                ["submit", "nan", "--data", str(demo_dir), "-o", str(tmp_path / "s.csv")]):
        result = runner.invoke(app, [*cmd, "--models", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert "predicts NaN" in result.output
    assert not (tmp_path / "s.csv").exists()


def test_rmse_never_drops_nan_predictions():
    truth = np.full((2, 30), np.nan)
    truth[:, :4] = 10.0
    pred = np.full((2, 30), 11.0)
    assert metrics.rmse(pred, truth) == pytest.approx(1.0)
    pred[0, 0] = np.nan
    assert np.isnan(metrics.rmse(pred, truth))
    assert np.isnan(metrics.per_keypoint_rmse(pred, truth)[0])
    assert np.isnan(metrics.per_image_rmse(pred, truth)[0])
    assert metrics.per_image_rmse(pred, truth)[1] == pytest.approx(1.0)
    pred[0, 0], pred[0, 20] = 11.0, np.nan  # an unlabelled coordinate is not scored
    assert metrics.rmse(pred, truth) == pytest.approx(1.0)


# -- leftovers ---------------------------------------------------------------------------


def test_stale_staging_is_listed_with_its_age_and_cleaned(tmp_path):
    stale = tmp_path / ".incomplete-old-abc123"
    stale.mkdir()
    (stale / "history.csv").write_text("epoch\n")
    hour_ago = time.time() - 3 * 3600
    os.utime(stale, (hour_ago, hour_ago))
    with runs.staged_run(tmp_path, "live") as live:
        result = runner.invoke(app, ["runs", "--models", str(tmp_path)])
        assert result.exit_code == 0
        text = " ".join(result.output.split())
        assert "staging .incomplete-old-abc123: run old-abc123, left by a killed training, " \
               "3.0 h old" in text
        assert f"staging {live.name}: run live, being written now" in text
        result = runner.invoke(app, ["runs", "--models", str(tmp_path), "--clean"])
        assert result.exit_code == 0 and "removed" in result.output
        assert not stale.exists() and live.is_dir()
        (live / "x").write_text("")
    assert (tmp_path / "live").is_dir()


# -- output files ------------------------------------------------------------------------


def test_submit_checks_its_output_path_first(good, demo_dir, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    cases = {
        tmp_path: "is a folder",
        a_file / "sub.csv": "is a file, not a folder",
        tmp_path / "missing" / "sub.csv": "does not exist",
        Path("/proc/fkd-cannot-write.csv"): "",
    }
    for output, reason in cases.items():
        result = runner.invoke(app, ["submit", "good", "--data", str(demo_dir), "--models",
                                     str(good.path.parent), "-o", str(output)])
        assert result.exit_code == 1, (output, result.output)
        assert reason in " ".join(result.output.split()) and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "missing").exists()


def test_submission_file_mode_follows_the_umask(good, demo_dir, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "sub.csv"
        result = runner.invoke(app, ["submit", "good", "--data", str(demo_dir), "--models",
                                     str(good.path.parent), "-o", str(out)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o644


# -- hold-out rows -----------------------------------------------------------------------


def test_holdout_rows_are_untouched_and_scored(good, data, demo_dir, models):
    saved = good.val_predictions
    val, held, trained = (set(saved[k].tolist()) for k in
                          ("row_ids", "holdout_row_ids", "train_row_ids"))
    assert val and held and trained
    assert not (val & held) and not (val & trained) and not (held & trained)
    assert len(val | held | trained) == len(data.train)
    m = good.metrics
    assert m["holdout_images"] == len(held)
    assert m["holdout_rmse"] == pytest.approx(
        metrics.rmse(saved["holdout_pred"], saved["holdout_truth"]))
    ev = evaluate(good, data.train, subset="holdout")
    assert sorted(ev.row_ids.tolist()) == sorted(held)
    assert ev.rmse == pytest.approx(m["holdout_rmse"], rel=1e-4)
    result = runner.invoke(app, ["runs", "--models", str(models)])
    assert "hold-out" in result.output and f"{m['holdout_rmse']:.3f}" in result.output


def test_ensemble_scores_the_shared_holdout(good, data, models):
    other = runs.resolve(train(data.train, TrainConfig(**TINY, holdout_fraction=0.2, lr=3e-4),
                               models, run_id="good2", verbose=0))
    ens = runs.resolve(make_ensemble([good, other], weights="auto", models_dir=models,
                                     run_id="ens-holdout"))
    saved = ens.val_predictions
    np.testing.assert_array_equal(np.sort(saved["holdout_row_ids"]),
                                  np.sort(good.val_predictions["holdout_row_ids"]))
    w = ens.config["weights"]
    expected = (w[0] * good.val_predictions["holdout_pred"]
                + w[1] * other.val_predictions["holdout_pred"])
    np.testing.assert_allclose(saved["holdout_pred"], expected, atol=1e-5)
    assert ens.metrics["holdout_rmse"] == pytest.approx(
        metrics.rmse(expected, saved["holdout_truth"]), rel=1e-5)
    for key in ("fkd_version", "epochs_run", "run_id", "label_offset", "created"):
        assert key in ens.config and key in good.config


def test_debiased_submission_subtracts_each_models_validation_error(good, data, models):
    """``debias``: each model's mean error on its own validation rows, subtracted from its test
    predictions; an ensemble's members each by their own, then weighted as the ensemble is."""
    from fkd_core.evaluation import submission, validation_bias
    from fkd_core.keypoints import COLUMN_NAMES

    other = runs.resolve(train(data.train, TrainConfig(**TINY, lr=3e-4, seed=3), models,
                               run_id="debias-other", verbose=0))
    ens = runs.resolve(make_ensemble([good, other], weights="0.7,0.3", models_dir=models,
                                     run_id="ens-debias"))
    bias = validation_bias(good)
    val = good.val_predictions
    assert bias.shape == (30,) and np.abs(bias).max() > 0.1
    unbiased = np.nanmean(val["pred_tta"] - bias - val["truth"], axis=0)
    np.testing.assert_allclose(unbiased[np.isfinite(unbiased)], 0.0, atol=1e-4)
    asked = data.lookup.FeatureName.map({n: i for i, n in enumerate(COLUMN_NAMES)}).to_numpy()
    w = ens.config["weights"]
    for run, shift in ((good, bias[asked]),
                       (ens, w[0] * bias[asked] + w[1] * validation_bias(other)[asked])):
        plain = submission(run, data).Location.to_numpy()
        fixed = submission(run, data, debias=True).Location.to_numpy()
        inside = (plain > 1) & (plain < 94) & (fixed > 1) & (fixed < 94)  # not clipped
        assert inside.mean() > 0.5, run.id
        np.testing.assert_allclose(fixed[inside], plain[inside] - shift[inside], atol=1e-3,
                                   err_msg=run.id)


# -- settings ------------------------------------------------------------------------------


def test_cli_and_dashboard_follow_one_settings_rule(good, demo_dir, tmp_path, monkeypatch):
    from app.state import Settings

    env_models = tmp_path / "from-env"
    monkeypatch.setenv("FKD_MODELS", str(env_models))
    monkeypatch.setenv("FKD_DATA", str(demo_dir))
    result = runner.invoke(app, ["train", *TINY_CLI, "--run-id", "via-env"])
    assert result.exit_code == 0, result.output
    assert (env_models / "via-env" / "model.keras").is_file()
    assert runs.resolve("via-env", env_models).config["data"]["source"].startswith(
        str(demo_dir))
    listed = runner.invoke(app, ["runs"])
    assert "via-env" in listed.output
    flagged = runner.invoke(app, ["runs", "--models", str(good.path.parent)])
    assert "via-env" not in flagged.output and "good" in flagged.output
    assert Settings.from_args([]) == Settings(str(demo_dir), str(env_models))
    assert Settings.from_args(["--models", "elsewhere"]).models == "elsewhere"
    monkeypatch.delenv("FKD_MODELS")
    monkeypatch.delenv("FKD_DATA")
    assert Settings.from_args([]) == Settings(None, "models")


def test_dashboard_store_lists_a_bad_config_as_broken(good, demo_dir, tmp_path):
    from app.state import Settings, Store

    bad = _copy_run(good, tmp_path, "bad-config")
    _copy_run(good, tmp_path, "fine")
    _edit_json(bad / "config.json", train_seconds="abc", model=["not", "an", "object"])
    store = Store(Settings(str(demo_dir), str(tmp_path)))
    assert [r.id for r in store.ok_runs()] == ["fine"]
    (broken,) = [r for r in store.runs() if not r.ok]
    assert broken.id == "bad-config" and "train_seconds must be a number" in broken.error


def test_leaderboard_shows_holdout_beside_validation(good, data, tmp_path):
    from app.leaderboard import leaderboard_frame

    plain = runs.resolve(train(data.train, TrainConfig(**TINY), tmp_path, run_id="no-holdout",
                               verbose=0))
    frame = leaderboard_frame([good, plain]).set_index("run")
    assert frame.loc["good", "hold-out RMSE"] == pytest.approx(good.metrics["holdout_rmse"])
    assert frame.loc["good", "hold-out TTA"] == pytest.approx(good.metrics["holdout_rmse_tta"])
    assert np.isnan(frame.loc["no-holdout", "hold-out RMSE"])
    assert "hold-out RMSE" not in leaderboard_frame([plain]).columns


def test_heatmap_cells_colours_and_clicks_from_the_browser(good, demo_dir, tmp_path):
    """The leaderboard's heatmap: what the browser draws, and a click (untrusted: the browser
    sets it) opens only a cell that exists."""
    from bokeh.palettes import Viridis256

    from app.leaderboard import NAN_COLOR, Leaderboard, colours
    from app.state import Settings, Store
    from fkd_core.keypoints import KEYPOINT_NAMES

    assert colours(np.array([1.0, 2.0, np.nan, 1.5]), 1.0, 2.0) == [
        Viridis256[0], Viridis256[-1], NAN_COLOR, Viridis256[128]]
    _copy_run(good, tmp_path, "a-run")
    _copy_run(good, tmp_path, "b-run")
    _edit_json(tmp_path / "b-run" / "metrics.json", val_rmse=good.metrics["val_rmse"] + 1)
    opened = []
    board = Leaderboard(Store(Settings(str(demo_dir), str(tmp_path))),
                        on_cell=lambda run, k: opened.append((run, k)))
    heat = board._cells.heat
    assert heat["runs"] == ["a-run", "b-run"] and heat["keypoints"] == list(KEYPOINT_NAMES)
    assert len(heat["cells"]) == 2 * len(KEYPOINT_NAMES)
    per_kp = good.metrics["per_keypoint"]
    fill, ink, label, title = heat["cells"][len(KEYPOINT_NAMES) + 10]  # b-run, nose_tip
    assert KEYPOINT_NAMES[10] == "nose_tip"
    assert label == f"{per_kp['nose_tip']:.1f}"
    assert title == f"b-run · nose_tip · {per_kp['nose_tip']:.3f} px"
    values = [per_kp[k] for k in KEYPOINT_NAMES]
    assert fill == colours(np.array([per_kp["nose_tip"]]), min(values), max(values))[0]
    assert heat["scale"][:2] == [f"{min(values):.2f}", f"{max(values):.2f} px"]

    for pick in ("26 1", "999 2", "-1 3", "nose_tip", "", "3.5 4", "17 5"):
        board._cells.pick = pick
    assert opened == [("b-run", KEYPOINT_NAMES[11]), ("b-run", KEYPOINT_NAMES[2])]


def test_one_frame_for_submission_augmentation_and_display():
    from app.faces import in_frame as drawn
    from fkd_core.keypoints import FRAME, clip_to_frame, in_frame

    pts = np.array([[-3.0, 10.0], [95.4, 95.6], [50.0, -0.4]] + [[40.0, 40.0]] * 12)
    flat = pts.reshape(1, 30)
    inside = in_frame(flat)[0]
    assert inside.tolist() == [False, False, True] + [True] * 12
    clipped = clip_to_frame(flat)[0].reshape(15, 2)
    np.testing.assert_allclose(clipped, drawn(pts))
    assert in_frame(clip_to_frame(flat)).all()
    np.testing.assert_allclose(clipped[:2], [[FRAME[0], 10.0], [95.4, FRAME[1]]])
    shifted = clip_to_frame(flat, label_offset=1.0)[0].reshape(15, 2)
    assert shifted[1, 0] == pytest.approx(95.4) and shifted[0, 0] == FRAME[0] + 1.0


def test_keras_floor_is_past_every_published_safe_mode_bypass():
    """CVE-2025-1550 (fixed 3.9), CVE-2025-8747 and CVE-2025-9906 (3.11), CVE-2026-1462
    (3.12.1 / 3.14): no Keras that the package admits, nor the one installed, predates them."""
    import importlib.metadata as metadata

    import keras
    from packaging.requirements import Requirement
    from packaging.version import Version

    (keras_req,) = [Requirement(r) for r in metadata.requires("fkd")
                    if Requirement(r).name == "keras"]
    for unsafe in ("3.6.0", "3.8.0", "3.10.0", "3.11.3", "3.12.0", "3.13.1"):
        assert not keras_req.specifier.contains(unsafe), unsafe
    assert keras_req.specifier.contains("3.14.0")
    assert Version(keras.__version__) >= Version("3.14")
