"""fkd train --strategy / --precision: a real two-worker MultiWorkerMirroredStrategy training
on localhost, and the checks that refuse what cannot work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fkd_core import distribute, runs
from fkd_core.cli import app

TINY = ["--arch", "simple", "--head", "regression", "--epochs", "1", "--batch-size", "8",
        "--val-fraction", "0.25", "--augment", "none"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_one_epoch_and_only_the_chief_writes(demo_dir, tmp_path):
    models = tmp_path / "models"
    workers = [f"localhost:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(demo_dir),
             "--models", str(models), *TINY, "--strategy", "multiworker", "--run-id", "mw"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-3000:]
    assert "run " in outputs[0] and "worker finished" in outputs[1]
    found = runs.list_runs(models)
    assert [r.id for r in found] == ["mw"] and found[0].ok, [r.error for r in found]
    assert sorted(p.name for p in models.iterdir()) == [".locks", "mw"]  # no staging left
    config = found[0].config
    placed = config["distribute"]
    assert placed["strategy"] == "multiworker" and placed["workers"] == 2
    assert placed["replicas"] == 2 and placed["global_batch_size"] == 16
    assert placed["scaled_lr"] == pytest.approx(2 * placed["lr"])
    assert placed["cluster"] == {"worker": workers}
    assert config["train"]["strategy"] == "multiworker" and config["epochs_run"] == 1
    history = (found[0].path / "history.csv").read_text().strip().splitlines()
    assert len(history) == 2  # header and the one epoch
    # 90 training rows in global batches of 16: 6 steps, printed by both workers
    assert all("6/6" in output for output in outputs)
    assert found[0].load_model().dtype_policy.name == "float32"


def test_default_strategy_records_one_device_and_unscaled_settings(demo_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(demo_dir), "--models",
                                      str(tmp_path), *TINY, "--steps-per-epoch", "1",
                                      "--strategy", "default", "--run-id", "one"])
    assert result.exit_code == 0, result.output
    placed = runs.resolve("one", tmp_path).config["distribute"]
    assert placed["strategy"] == "default" and placed["replicas"] == placed["workers"] == 1
    assert placed["global_batch_size"] == 8 and placed["scaled_lr"] == placed["lr"]
    assert len(placed["devices"]) == 1
    assert placed["devices"][0].rsplit("/", 1)[-1].split(":")[-2] in ("CPU", "GPU")


def test_mixed_precision_is_refused_without_a_gpu(demo_dir, tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(app, ["train", "--data", str(demo_dir), "--models",
                                      str(tmp_path), *TINY, "--precision", "mixed"])
    assert result.exit_code == 1
    assert "--precision mixed needs a GPU" in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, named", [
    (["--strategy", "ring"], "strategy must be one of auto, default, mirrored, multiworker"),
    (["--precision", "half"], "precision must be one of float32, mixed"),
])
def test_unknown_strategy_or_precision_is_an_error(options, named, demo_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(demo_dir), "--models",
                                      str(tmp_path), *TINY, *options])
    assert result.exit_code == 1
    assert named in " ".join(result.output.split())


@pytest.mark.parametrize("text, named", [
    ("{", "TF_CONFIG is not JSON"),
    ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "cluster.ps"),
    ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}',
     "HOST:PORT"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     "task.index must be 0 to 0"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "task.type 'chief' is not in the cluster"),
])
def test_bad_tf_config_is_named(text, named):
    with pytest.raises(distribute.DistributeError, match=named):
        distribute.read_tf_config(text)


def test_chief_is_the_chief_task_or_else_worker_zero():
    workers = {"worker": ["a:1", "b:1"]}
    assert distribute.is_chief({"cluster": workers, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief({"cluster": workers, "task": {"type": "worker", "index": 1}})
    with_chief = {**workers, "chief": ["c:1"]}
    assert distribute.is_chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})
    assert not distribute.is_chief({"cluster": with_chief,
                                    "task": {"type": "worker", "index": 0}})


def test_one_tensorflow_build_installed_is_no_conflict():
    from importlib import metadata

    builds = []
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            builds.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            pass
    assert (distribute.install_conflict() is None) == (len(builds) < 2)
