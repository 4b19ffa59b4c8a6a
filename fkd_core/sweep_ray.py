"""``fkd sweep --backend ray``: each trial a Ray task on a Ray cluster, or on a local Ray
instance started for the sweep.

Ray is an optional extra (``pip install 'fkd[ray]'``) and only this module imports it. The
sweep's process stays the only writer of the sweep's record (:mod:`fkd_core.sweeps`); each
trial's task trains exactly as ``fkd sweep`` does in its own process, through
:func:`fkd_core.training.train`, so its run folder is staged and renamed into the models
folder atomically by the worker that trained it, and a failure is recorded as the same
``Type: message`` error.

The training data travel once through Ray's object store, so workers need no copy of the
data. The models folder does not travel: on a cluster it must be shared storage (NFS or
similar) mounted at the same path on every node. A worker that cannot see the sweep's
folder there fails its trial saying so, instead of writing a run nobody will find.

Each task asks Ray for ``cpus`` CPUs and ``gpus`` GPUs; TensorFlow's thread pools are sized
to the CPUs. A trial with GPUs runs in a worker process of its own (``max_calls=1``):
TensorFlow keeps the GPUs it first saw, and their memory, for the process's lifetime. CPU
trials reuse Ray's workers (TensorFlow imported once per worker, the Keras session cleared
per trial, as ``fkd sweep`` does in one process). Ray does not retry a failed trial;
running the sweep again does.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import time
from pathlib import Path

import ray

from fkd_core.files import atomic_write
from fkd_core.sweeps import train_trial, trial_tags

TOKEN = ".ray-token"


def _trial(train_set, config, models_dir: str, run_id: str, *, folder: str, token: str,
           corrections, recipe, sweep) -> dict:
    """One trial on a Ray worker; returns ``{"error": None or text, "seconds": s}``."""
    started = time.monotonic()
    try:
        seen = (Path(folder) / TOKEN).read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen != token:
        return {"seconds": 0.0, "error": (
            f"node {socket.gethostname()} does not see this sweep's folder {folder}: on a Ray "
            "cluster the models folder must be shared storage mounted at the same path on "
            "every node")}
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # a reused worker's TensorFlow is set already
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    with open(Path(folder) / f"{run_id}.log", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        error = train_trial(train_set, config, models_dir, run_id, corrections=corrections,
                            recipe=recipe, sweep=sweep, verbose=2)
        if error:
            print(f"error: {error}")
    return {"seconds": time.monotonic() - started, "error": error}


def connect(address: str | None, cpus: int, parallel: int) -> bool:
    """Join the cluster at ``address``, or start a local instance with room for ``parallel``
    trials; returns whether this call started Ray (and so must shut it down)."""
    if ray.is_initialized():  # a Ray session the caller opened: use it, leave it open
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # GPUs as Ray finds them: claiming absent ones would train on the CPU unnoticed
        ray.init(num_cpus=math.ceil(parallel * cpus), include_dashboard=False,
                 log_to_driver=False)
    return True


def check_room(cpus: float, gpus: float) -> None:
    """A SweepError if no node of the cluster could ever run one trial (Ray would wait for
    ever)."""
    from fkd_core.sweeps import SweepError

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        most = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise SweepError(f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for a trial (the "
                         f"largest has {most.get('CPU', 0):g} CPUs, {most.get('GPU', 0):g} "
                         "GPUs); lower --trial-cpus / --trial-gpus")


def run_trials(sweep, todo, models_dir: Path, folder: Path, train_set, corrections, *,
               address: str | None, cpus: float, gpus: float, parallel: int, report, finish,
               total: int, record: dict, path: Path, write_record) -> None:
    """Submit every trial still to do, then record each as it finishes."""
    if not todo:
        return
    token = secrets.token_hex(16)
    with atomic_write(folder / TOKEN, encoding="utf-8") as f:
        f.write(token)
    started_here = connect(address, cpus, parallel)
    pending: dict = {}
    try:
        check_room(cpus, gpus)
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1 if gpus else 0,
                            max_retries=0)(_trial)
        data = ray.put(train_set)
        for i, trial, entry in todo:
            recipe, tag = trial_tags(sweep, trial)
            ref = remote.remote(
                data, trial.config, str(Path(models_dir).resolve()), trial.run_id,
                folder=str(folder.resolve()), token=token, corrections=corrections,
                recipe=recipe, sweep=tag)
            pending[ref] = (i, trial, entry)
            entry["status"] = "running"
            report("training", trial, i, total)
        write_record(path, record)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, trial, entry = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker or its node died
                    result = {"seconds": 0.0, "error": f"{type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300]}"}
                finish(entry, trial, i, time.monotonic() - result["seconds"], result["error"])
    finally:
        for ref in pending:  # interrupted: running trials clean their staging folders up
            ray.cancel(ref)
        if started_here:
            ray.shutdown()
        with contextlib.suppress(OSError):
            os.unlink(folder / TOKEN)
