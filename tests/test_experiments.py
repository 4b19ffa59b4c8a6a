"""fkd_core.experiments: history.csv checks, sweep tables, FLOPs and the cached inference cost,
on real CSVLogger output and a real tiny run."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import experiments, runs
from fkd_core.cli import app
from fkd_core.experiments import HistoryError, read_history

GOOD = ("epoch,loss,rmse_px,val_loss,val_rmse_px\n"
        "0,0.5,20.0,0.4,18.0\n"
        "1,0.2,12.0,0.1,9.5\n"
        "2,0.1,8.0,0.12,10.0\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_dir) -> runs.Run:
    """A real tiny run made by ``fkd train`` (its history.csv written by Keras)."""
    models = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(app, [
        "train", "--data", str(demo_dir), "--models", str(models), "--run-id", "tiny",
        "--arch", "simple", "--head", "regression", "--epochs", "2", "--steps-per-epoch", "2",
        "--augment", "none"])
    assert result.exit_code == 0, result.output
    return runs.resolve(models / "tiny")


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "run" / "history.csv"
    path.parent.mkdir(exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# -- history ------------------------------------------------------------------------------


def test_real_history_matches_the_run(run):
    history = read_history(run.path)
    assert history.epochs.tolist() == [1, 2]
    assert set(history.columns) >= {"loss", "rmse_px", "val_loss", "val_rmse_px"}
    assert history.best_epoch == run.config["best_epoch"]
    val = history.curve("val_rmse_px")
    assert np.all(np.isfinite(val)) and np.all(val > 0)
    assert float(np.nanmin(val)) == pytest.approx(run.val_rmse, rel=0.05)


def test_history_values_and_best_epoch(tmp_path):
    history = read_history(_write(tmp_path, GOOD))
    assert history.epochs.tolist() == [1, 2, 3]
    assert history.curve("val_rmse_px").tolist() == [18.0, 9.5, 10.0]
    assert history.best_epoch == 2
    assert history.curve("rmse_px").tolist() == [20.0, 12.0, 8.0]


def test_nan_is_a_gap_and_best_falls_back_to_val_loss(tmp_path):
    history = read_history(_write(tmp_path, "epoch,loss,val_loss\n0,nan,0.3\n1,0.2,0.1\n"))
    assert np.isnan(history.curve("loss")[0])
    assert history.best_epoch == 2
    assert read_history(_write(tmp_path, "epoch,loss\n0,1.0\n")).best_epoch is None


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("epoch,loss\n", "no epochs logged"),
    ("loss,val_loss\n0.1,0.2\n", "no 'epoch' column"),
    ("epoch,loss,<img src=x>\n0,1,2\n", "column name '<img src=x>' is not a metric name"),
    ("epoch,loss,loss\n0,1,2\n", "appears twice"),
    ("epoch,loss\n0,1\n1,2,3\n", "line 3 has 3 values, the header 2"),
    ("epoch,loss\n0,1\n1,abc\n", "line 3, loss: 'abc' is not a number"),
    ("epoch,loss\n0,inf\n", "line 2, loss: inf is not a finite number"),
    ("epoch,loss\n0,1e300\n", "is not a finite number below"),
    ("epoch,loss\n0.5,1\n", "epoch must be a whole number from 0"),
    ("epoch,loss\n-1,1\n", "epoch must be a whole number from 0"),
    ("epoch,loss\n0,1\n2,1\n1,1\n", "line 4: epochs must increase"),
    (b"epoch,loss\n0,\xff\n", "not UTF-8"),
])
def test_bad_history_is_named_error(tmp_path, text, expected):
    with pytest.raises(HistoryError) as err:
        read_history(_write(tmp_path, text))
    assert expected in str(err.value)
    assert str(err.value).startswith("run/history.csv: ")


def test_missing_and_oversized_history(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    with pytest.raises(HistoryError, match="missing"):
        read_history(tmp_path / "run")
    path = _write(tmp_path, GOOD)
    monkeypatch.setattr(experiments, "MAX_HISTORY_BYTES", 10)
    with pytest.raises(HistoryError, match="more than a training log"):
        read_history(path)


# -- sweeps -------------------------------------------------------------------------------


def _run(run_id: str, values: dict | None, rmse: float | None, sweep: str = "s") -> runs.Run:
    config = {"kind": "single", "arch": "simple", "train": {"arch": "simple", "lr": 0.001}}
    if values is not None:
        config["sweep"] = {"id": sweep, "values": values}
    return runs.Run(Path(run_id), config, {"val_rmse": rmse})


def test_sweeps_group_tagged_usable_runs():
    broken = _run("b", {"lr": 1}, 1.0)
    broken.error = "missing model.keras"
    found = experiments.sweeps_of([
        _run("a2", {"lr": 0.1}, 1.0), _run("a1", {"lr": 0.2}, 2.0), _run("x", None, 1.0),
        _run("c", {"lr": 0.1}, 1.0, sweep="other"), broken])
    assert {k: [r.id for r in v] for k, v in found.items()} == {"other": ["c"],
                                                                  "s": ["a1", "a2"]}
    assert experiments.swept_keys([_run("a", {"lr": 1, "width": 2}, 1.0),
                                   _run("b", {"width": 2, "aug": "x"}, 1.0)]) == [
        "lr", "width", "aug"]


def test_sensitivity_means_per_value_and_line():
    sweep = [
        _run("a", {"lr": 0.001, "width": 0.5, "seed": 0}, 4.0),
        _run("b", {"lr": 0.001, "width": 0.5, "seed": 1}, 6.0),
        _run("c", {"lr": 0.0003, "width": 0.5, "seed": 0}, 3.0),
        _run("d", {"lr": 0.001, "width": 1, "seed": 0}, 2.0),
        _run("e", {"lr": 10, "width": 1, "seed": 0}, None),  # not scored: left out
    ]
    xs, lines = experiments.sensitivity(sweep, "lr", "width")
    assert xs == ["0.0003", "0.001"]  # by value, not as text
    assert [line.label for line in lines] == ["width = 0.5", "width = 1"]
    half, one = lines
    assert half.x == ["0.0003", "0.001"] and half.mean.tolist() == [3.0, 5.0]
    assert half.best.tolist() == [3.0, 4.0] and half.count.tolist() == [1, 2]
    assert half.best_run == ["c", "a"]
    assert one.x == ["0.001"] and one.mean.tolist() == [2.0]
    xs, (only,) = experiments.sensitivity(sweep, "width")
    assert xs == ["0.5", "1"] and only.label == "all runs"
    assert only.mean.tolist() == pytest.approx([13 / 3, 2.0])


def test_sensitivity_of_text_values_and_types_kept_apart():
    sweep = [_run("a", {"arch": "vgg"}, 2.0), _run("b", {"arch": "resnet"}, 1.0),
             _run("c", {"arch": True}, 3.0), _run("d", {"arch": 1}, 4.0)]
    xs, (line,) = experiments.sensitivity(sweep, "arch")
    assert xs == ["1", "resnet", "true", "vgg"]
    assert line.mean.tolist() == [4.0, 1.0, 3.0, 2.0]


def test_settings_text_names_the_differences():
    run = _run("a", {"lr": 0.001}, 1.0, sweep="<b>s</b>")
    run.config["train"].update(head="regression", width=0.5, epochs=3)
    text = experiments.settings_text(run)
    assert text == "head=regression · width=0.5 · lr=0.001 · epochs=3 · sweep <b>s</b>"


# -- cost ---------------------------------------------------------------------------------


def test_flops_count_convolutions_and_dense_layers():
    import keras

    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(4, 3, padding="same")(x)  # 64 positions × 3·3·1·4
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(y)  # 16 × 3·3·4·1
    y = keras.layers.SeparableConv2D(2, 3, padding="same")(y)  # 16 × (3·3·4·1 + 4·2)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(5)(y)  # 32·5
    model = keras.Model(x, y)
    macs = 64 * 36 + 16 * 36 + 16 * (36 + 8) + 32 * 5
    assert experiments.model_flops(model) == 2 * macs
    outer_in = keras.Input((8, 8, 1))
    outer = keras.Model(outer_in, model(outer_in))  # a composite: the member counted once
    assert experiments.model_flops(outer) == 2 * macs


def test_cost_is_measured_once_and_cached_in_the_run_folder(run, data, monkeypatch):
    images = data.train.images[:8]
    for old in run.path.glob("inference-*.json"):
        old.unlink()
    assert experiments.read_cost(run.path) is None
    cost = experiments.cached_cost(run, images)
    assert cost.ms_per_image > 0 and cost.batch == 8
    assert cost.flops == experiments.model_flops(run.load_model()) > 0
    (written,) = run.path.glob("inference-*.json")
    assert json.loads(written.read_text())["ms_per_image"] == cost.ms_per_image
    assert not list(run.path.glob(".*"))  # no temporary file left behind
    assert experiments.cached_cost(run, images) == cost  # read back, not measured again

    written.write_text(json.dumps({**json.loads(written.read_text()), "ms_per_image": -1}))
    assert experiments.read_cost(run.path) is None  # a forged file is measured again
    written.write_text("[1, 2]")
    assert experiments.read_cost(run.path) is None
    monkeypatch.setattr(experiments, "machine", lambda: "another machine")
    assert experiments.read_cost(run.path) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cost_of_a_read_only_run_folder_is_still_returned(run, data):
    for old in run.path.glob("inference-*.json"):
        old.unlink()
    mode = run.path.stat().st_mode
    run.path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        cost = experiments.cached_cost(run, data.train.images[:4])
    finally:
        run.path.chmod(mode)
    assert cost.ms_per_image > 0
    assert not list(run.path.glob("inference-*.json"))
