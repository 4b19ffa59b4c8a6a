"""fkd sweep --backend ray on real local Ray instances: the one the sweep starts, and a
cluster head started with `ray start` (--address); tiny real trainings, no Ray process left."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (the test install has the ray extra: a missing Ray fails here)
from typer.testing import CliRunner

import fkd_core
from fkd_core import runs, sweeps
from fkd_core.cli import app

runner = CliRunner()
TINY = ["--arch", "simple", "--head", "regression", "--epochs", "1", "--batch-size", "16",
        "--steps-per-epoch", "2", "--val-fraction", "0.25", "--augment", "none"]
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard",
                 "log_monitor.py", "monitor.py", "runtime_env")


def _ray_pids() -> set[int]:
    """Processes of any Ray instance on this machine (Ray's own process names)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ray" in cmdline and any(name in cmdline for name in RAY_PROCESSES):
            found.add(int(entry.name))
    return found


def _assert_no_new_ray_processes(before: set[int], wait: float = 60.0) -> None:
    """Ray's processes stop within seconds of a shutdown, later on a loaded machine."""
    deadline = time.monotonic() + wait
    while (left := _ray_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    shown = {}
    for pid in left:
        with contextlib.suppress(OSError):
            shown[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:120]
    assert not left, f"Ray processes left running: {shown}"


def _sweep(demo_dir, models, *args):
    return runner.invoke(app, ["sweep", "--data", str(demo_dir), "--models", str(models),
                               *TINY, "--backend", "ray", *args])


def _flat(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.slow
def test_ray_sweep_on_a_local_instance_makes_four_tagged_runs_and_resumes(demo_dir, tmp_path):
    before = _ray_pids()
    models = tmp_path / "models"
    grid = ["--grid", "lr=0.001,0.0003", "--grid", "width=0.25,0.5", "--sweep-id", "rg"]
    result = _sweep(demo_dir, models, *grid, "--parallel", "2")
    assert result.exit_code == 0, result.output
    assert "as Ray tasks (1 CPU, 0 GPU each) on a local Ray instance, 2 at a time" in \
        _flat(result)
    found = [r for r in runs.list_runs(models) if r.config.get("sweep", {}).get("id") == "rg"]
    assert all(r.ok for r in found), [r.error for r in found]
    assert sorted((r.config["sweep"]["values"]["lr"], r.config["sweep"]["values"]["width"])
                  for r in found) == [(0.0003, 0.25), (0.0003, 0.5), (0.001, 0.25), (0.001, 0.5)]
    for r in found:  # trained with the swept values, on one device, the sweep's log kept
        assert r.config["train"]["lr"] == r.config["sweep"]["values"]["lr"]
        assert r.config["train"]["width"] == r.config["sweep"]["values"]["width"]
        assert r.config["distribute"]["strategy"] == "default"
        assert "val_rmse_px" in (models / "_sweeps" / "rg" / f"{r.id}.log").read_text()
    record = sweeps.read_record(models / "_sweeps" / "rg" / "sweep.json")
    assert [t["status"] for t in record["trials"]] == ["done"] * 4
    assert all(t["val_rmse"] > 0 and t["seconds"] > 0 for t in record["trials"])
    assert not [p for p in models.iterdir() if p.name.startswith(runs.STAGING_PREFIX)]
    assert not (models / "_sweeps" / "rg" / ".ray-token").exists()
    assert not ray.is_initialized()
    _assert_no_new_ray_processes(before)

    stamps = {r.id: (r.path / "config.json").stat().st_mtime_ns for r in found}
    again = _sweep(demo_dir, models, *grid, "--parallel", "2")
    assert again.exit_code == 0, again.output
    assert _flat(again).count("already there, kept") == 4 and "training (" not in _flat(again)
    assert stamps == {r: (models / r / "config.json").stat().st_mtime_ns for r in stamps}
    assert _ray_pids() - before == set()  # nothing to train: Ray was not even started


@pytest.mark.slow
def test_ray_sweep_on_a_cluster_records_a_failed_trial_like_local(demo_dir, tmp_path):
    """`ray start --head` is the cluster; `fkd sweep` (a process of its own) joins it with
    --address. A throwaway cluster on localhost needs no token: Ray's token authentication
    is off for it and its drivers (not for this process, whose Ray keeps its mode)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    before = _ray_pids()
    port = 6400 + os.getpid() % 1000
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's sockets live in it
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={temp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        models = tmp_path / "models"
        for _ in range(60):  # the head is up once a driver can join it
            probe = subprocess.run(
                [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}')"],
                capture_output=True, timeout=120, env=env)
            if probe.returncode == 0:
                break
            assert head.poll() is None, head.stdout.read()
            time.sleep(1)
        # lr=1e30 passes every check but diverges at run time (as in the local test).
        result = subprocess.run(
            [sys.executable, "-m", "fkd_core.cli", "sweep", "--data", str(demo_dir),
             "--models", str(models), *TINY, "--backend", "ray", "--grid", "lr=1e30,0.001",
             "--sweep-id", "bad", "--address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 1, result.stdout + result.stderr[-3000:]
        assert "1 of 2 trials failed" in " ".join((result.stdout + result.stderr).split())
        record = sweeps.read_record(models / "_sweeps" / "bad" / "sweep.json")
        by_lr = {t["values"]["lr"]: t for t in record["trials"]}
        assert by_lr[1e30]["status"] == "failed"
        assert by_lr[1e30]["error"].startswith("FloatingPointError: ")
        assert "lr" in by_lr[1e30]["error"]
        assert not (models / by_lr[1e30]["run_id"]).exists()
        assert by_lr[0.001]["status"] == "done" and by_lr[0.001]["val_rmse"] > 0
        assert runs.resolve(by_lr[0.001]["run_id"], models).config["sweep"]["id"] == "bad"
        assert not [p for p in models.iterdir() if p.name.startswith(runs.STAGING_PREFIX)]
    finally:
        head.terminate()  # `ray start --block` stops the head's processes when it is stopped
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    _assert_no_new_ray_processes(before)
    shutil.rmtree(temp, ignore_errors=True)


def test_a_trial_no_node_can_hold_is_refused_not_waited_for(demo_dir, tmp_path):
    before = _ray_pids()
    result = _sweep(demo_dir, tmp_path, "--grid", "lr=0.001,0.0003", "--trial-gpus", "64")
    assert result.exit_code == 1, result.output
    assert "no Ray node has 1 CPUs and 64 GPUs for a trial" in _flat(result)
    assert not [p for p in tmp_path.iterdir() if p.name != "_sweeps"]
    record = sweeps.read_record(next(tmp_path.glob("_sweeps/*/sweep.json")))
    assert {t["status"] for t in record["trials"]} == {"pending"}
    assert not ray.is_initialized()
    _assert_no_new_ray_processes(before)


def test_missing_ray_is_a_clear_error(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.delitem(sys.modules, "fkd_core.sweep_ray", raising=False)
    monkeypatch.delattr(fkd_core, "sweep_ray", raising=False)  # imported by an earlier test
    result = _sweep(demo_dir, tmp_path, "--grid", "lr=0.001,0.0003")
    assert result.exit_code == 1
    assert "--backend ray needs Ray, an optional extra: pip install 'fkd[ray]'" in _flat(result)
    assert list(tmp_path.iterdir()) == []


def test_address_without_ray_backend_is_refused(demo_dir, tmp_path):
    result = runner.invoke(app, ["sweep", "--data", str(demo_dir), "--models", str(tmp_path),
                                 *TINY, "--grid", "lr=0.001,0.0003", "--address", "auto"])
    assert result.exit_code == 1
    assert "--address is the Ray cluster's: give it with --backend ray" in _flat(result)
    assert list(tmp_path.iterdir()) == []
