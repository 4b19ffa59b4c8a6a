"""fkd sweep / fkd sweeps with tiny real trainings, and every run's TensorBoard logs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fkd_core import runs, sweeps
from fkd_core.cli import app

runner = CliRunner()
TINY = ["--arch", "simple", "--head", "regression", "--epochs", "2", "--batch-size", "16",
        "--steps-per-epoch", "2", "--val-fraction", "0.25", "--augment", "none"]


def _sweep(demo_dir, models, *args):
    return runner.invoke(app, ["sweep", "--data", str(demo_dir), "--models", str(models),
                               *TINY, *args])


def _flat(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def grid_sweep(demo_dir, models):
    result = _sweep(demo_dir, models, "--grid", "lr=0.001,0.0003", "--grid", "width=0.25,0.5",
                    "--sweep-id", "grid")
    assert result.exit_code == 0, result.output
    return result


def _sweep_runs(models, sweep_id):
    found = [r for r in runs.list_runs(models) if r.config.get("sweep", {}).get("id") == sweep_id]
    assert all(r.ok for r in found), [r.error for r in found]
    return found


def test_grid_makes_one_tagged_run_per_combination(grid_sweep, models):
    found = _sweep_runs(models, "grid")
    values = sorted((r.config["sweep"]["values"]["lr"], r.config["sweep"]["values"]["width"])
                    for r in found)
    assert values == [(0.0003, 0.25), (0.0003, 0.5), (0.001, 0.25), (0.001, 0.5)]
    for r in found:  # the swept values are the ones trained with
        assert r.config["train"]["lr"] == r.config["sweep"]["values"]["lr"]
        assert r.config["train"]["width"] == r.config["sweep"]["values"]["width"]
        assert r.config["train"]["epochs"] == 2 and r.config["train"]["arch"] == "simple"
    record = sweeps.read_record(models / "_sweeps" / "grid" / "sweep.json")
    assert [t["status"] for t in record["trials"]] == ["done"] * 4
    assert {t["run_id"] for t in record["trials"]} == {r.id for r in found}
    assert "4 trials" in _flat(grid_sweep)


def test_run_writes_tensorboard_epoch_scalars(grid_sweep, models):
    import tensorflow as tf

    pytest.importorskip("tensorboard", reason="Keras writes TensorBoard logs with it")
    run = _sweep_runs(models, "grid")[0]
    for part in ("train", "validation"):
        files = list((run.path / "tensorboard" / part).glob("events.out.tfevents.*"))
        assert len(files) == 1, files
        steps: dict[str, list[int]] = {}
        for raw in tf.data.TFRecordDataset(str(files[0])):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
        assert sorted(steps["epoch_loss"]) == [0, 1], steps  # one scalar per epoch
        assert sorted(steps["epoch_rmse_px"]) == [0, 1], steps
    # The folder does not make the run unreadable for fkd runs or for loading.
    assert runs.resolve(run.id, models).load_model() is not None
    assert runner.invoke(app, ["runs", "--models", str(models)]).exit_code == 0


def test_rerun_trains_nothing(grid_sweep, demo_dir, models):
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    configs = {r.id: (r.path / "config.json").stat().st_mtime_ns
               for r in _sweep_runs(models, "grid")}
    result = _sweep(demo_dir, models, "--grid", "lr=0.001,0.0003", "--grid", "width=0.25,0.5",
                    "--sweep-id", "grid")
    assert result.exit_code == 0, result.output
    assert _flat(result).count("already there, kept") == 4
    assert "training (" not in _flat(result)
    after = {p.name: p.stat().st_mtime_ns for p in models.iterdir() if p.name != "_sweeps"}
    assert after == {k: v for k, v in before.items() if k != "_sweeps"}
    assert configs == {r.id: (r.path / "config.json").stat().st_mtime_ns
                       for r in _sweep_runs(models, "grid")}


def test_failed_trial_is_recorded_and_the_others_finish(demo_dir, models):
    # lr=1e30 passes every check but diverges at run time.
    result = _sweep(demo_dir, models, "--grid", "lr=1e30,0.001", "--sweep-id", "bad")
    assert result.exit_code == 1, result.output
    assert "1 of 2 trials failed" in _flat(result)
    record = sweeps.read_record(models / "_sweeps" / "bad" / "sweep.json")
    by_lr = {t["values"]["lr"]: t for t in record["trials"]}
    assert by_lr[1e30]["status"] == "failed" and "lr" in by_lr[1e30]["error"]
    assert not (models / by_lr[1e30]["run_id"]).exists()
    assert by_lr[0.001]["status"] == "done" and by_lr[0.001]["val_rmse"] > 0
    assert runs.resolve(by_lr[0.001]["run_id"], models).config["sweep"]["id"] == "bad"
    assert not [p for p in models.iterdir() if p.name.startswith(runs.STAGING_PREFIX)]


def test_sweeps_lists_progress_and_best_trial(grid_sweep, models):
    result = runner.invoke(app, ["sweeps", "--models", str(models)])
    assert result.exit_code == 0, result.output
    best = min(_sweep_runs(models, "grid"), key=lambda r: r.val_rmse)
    lines = {line.split(":")[0]: line for line in result.output.splitlines()}
    assert "sweep grid" in lines
    assert "4/4 done, 0 failed" in lines["sweep grid"]
    assert f"best {best.id}, val RMSE {best.val_rmse:.3f} px" in lines["sweep grid"]


def test_broken_sweep_record_is_listed_with_the_reason(tmp_path):
    folder = tmp_path / "_sweeps" / "odd"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(
        {"sweep_id": "odd", "spec": {}, "trials": [{"run_id": "../x", "values": {},
                                                     "status": "done"}]}))
    result = runner.invoke(app, ["sweeps", "--models", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "broken sweep odd" in _flat(result) and "trials[0].run_id" in _flat(result)


@pytest.mark.parametrize("grid, named", [
    (["lrate=0.1,0.2"], "lrate"),
    (["aug.spin=1,2"], "spin"),
    (["lr=0.001,-1"], "lr"),
    (["arch=simple,nonet"], "nonet"),
    (["data=a,b"], "data cannot be swept"),
])
def test_bad_grid_is_an_error_naming_it_before_training(grid, named, demo_dir, tmp_path):
    args = [a for g in grid for a in ("--grid", g)]
    result = _sweep(demo_dir, tmp_path, *args)
    assert result.exit_code == 1, result.output
    assert named in _flat(result)
    assert list(tmp_path.iterdir()) == []  # nothing trained, no record


def test_trial_ids_are_deterministic_and_random_draws_seeded():
    grid = sweeps.parse_grid(["lr=1e-3,3e-4,1e-4", "aug.rotate_deg=5,15"])
    assert grid == {"lr": [1e-3, 3e-4, 1e-4], "aug.rotate_deg": [5, 15]}
    a = sweeps.plan({"arch": "simple", "head": "regression"}, grid, draws=3)
    b = sweeps.plan({"arch": "simple", "head": "regression"}, grid, draws=3)
    assert [t.run_id for t in a.trials] == [t.run_id for t in b.trials]
    assert a.sweep_id == b.sweep_id and len({t.run_id for t in a.trials}) == 3
    assert a.trials[0].config.augment["rotate_deg"] == a.trials[0].values["aug.rotate_deg"]
    full = sweeps.plan({"arch": "simple", "head": "regression"}, grid)
    assert len(full.trials) == 6 and full.sweep_id != a.sweep_id


def test_bad_sweep_tag_in_config_makes_the_run_broken(grid_sweep, models, tmp_path):
    import shutil

    run = _sweep_runs(models, "grid")[0]
    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["sweep"]["values"]["lr"] = {"nested": 1}
    (copy / "config.json").write_text(json.dumps(config))
    broken = runs.read_run(copy)
    assert not broken.ok and "sweep: values: lr must be a single value" in broken.error


def test_parallel_trials_run_as_train_processes_with_a_recipe(demo_dir, tmp_path):
    """Trials as `fkd train` processes; the recipe and the sweep's options merge as in
    fkd train (the command line's --epochs 1 overrides the recipe's 2)."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('arch = "simple"\nhead = "regression"\nepochs = 2\nbatch_size = 16\n'
                      'steps_per_epoch = 2\nval_fraction = 0.25\naugment = "none"\n')
    models = tmp_path / "models"
    result = runner.invoke(app, ["sweep", "--config", str(recipe), "--data", str(demo_dir),
                                 "--models", str(models), "--epochs", "1",
                                 "--grid", "width=0.25,0.5", "--parallel", "2",
                                 "--sweep-id", "par"])
    assert result.exit_code == 0, result.output
    found = _sweep_runs(models, "par")
    assert sorted(r.config["sweep"]["values"]["width"] for r in found) == [0.25, 0.5]
    for r in found:
        assert r.config["train"]["epochs"] == 1 and r.config["train"]["arch"] == "simple"
        assert r.config["epochs_run"] == 1
        assert r.config["recipe"]["path"] == str(recipe)
        assert (models / "_sweeps" / "par" / f"{r.id}.log").is_file()


def test_same_sweep_id_with_other_settings_is_refused(grid_sweep, demo_dir, models):
    before = sorted(p.name for p in models.iterdir())
    result = _sweep(demo_dir, models, "--grid", "lr=0.001,0.01", "--sweep-id", "grid")
    assert result.exit_code == 1, result.output
    assert "sweep grid exists with other settings" in _flat(result)
    assert sorted(p.name for p in models.iterdir()) == before


def test_unknown_train_option_is_refused(demo_dir, tmp_path):
    result = _sweep(demo_dir, tmp_path, "--lrr", "3", "--grid", "lr=0.001,0.0003")
    assert result.exit_code == 2, result.output
    assert "--lrr" in _flat(result)
    assert list(tmp_path.iterdir()) == []


def test_broken_trial_folder_is_reported_not_trained_over(demo_dir, tmp_path):
    plan = sweeps.plan({"data": str(demo_dir)}, sweeps.parse_grid(["lr=0.001,0.0003"]),
                       sweep_id="half")
    (tmp_path / plan.trials[0].run_id).mkdir()  # a folder missing every file
    (tmp_path / plan.trials[1].run_id).mkdir()
    result = _sweep(demo_dir, tmp_path, "--grid", "lr=0.001,0.0003", "--sweep-id", "half")
    assert result.exit_code == 1, result.output
    record = sweeps.read_record(tmp_path / "_sweeps" / "half" / "sweep.json")
    assert [t["status"] for t in record["trials"]] == ["failed", "failed"]
    assert "exists but is broken (missing model.keras" in record["trials"][0]["error"]
    assert not list((tmp_path / plan.trials[0].run_id).iterdir())
