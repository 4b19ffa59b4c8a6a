"""Sweeps: one ``fkd train`` setting and a grid of values to try, each trial a normal run.

A sweep is the base options (``fkd train``'s, merged with a recipe exactly as ``fkd train
--config`` merges them, :mod:`fkd_core.recipes`) plus ``--grid KEY=V1,V2`` lists; it trains
every combination, or ``--random N`` seeded draws of them. Each trial's run id comes from the
sweep id and its values alone, so running the same sweep again skips the trials whose run
folder exists: a sweep resumes. Every trial is validated (unknown key, wrong type, a value
``fkd train`` refuses) before the first one trains.

The sweep's record, ``<models>/_sweeps/<sweep id>/sweep.json`` (``_`` folders are never runs),
keeps each trial's state, error and validation RMSE; only the process running the sweep
writes it, atomically, under a lock, and every trial's ``config.json`` carries
``sweep = {id, values}``. Trials train one after another in this process, or ``parallel``
at a time as ``python -m fkd_core.cli train`` subprocesses (their output in the sweep's
folder, ``<run id>.log``), or as Ray tasks (``backend="ray"``, :mod:`fkd_core.sweep_ray`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fkd_core import recipes
from fkd_core.files import atomic_write
from fkd_core.run_schema import RunFileError, now_iso, validate_run_id

SWEEPS_DIR = "_sweeps"
RECORD = "sweep.json"
STATES = ("pending", "running", "done", "failed")
#: Options that say where things are, not how to train: never swept.
NOT_SWEPT = ("data", "models", "run_id", "corrections")
BACKENDS = ("local", "ray")
MAX_SWEEP_ID = 64


class SweepError(ValueError):
    """A sweep that cannot run, or a record that cannot be read; the message says where."""


# -- planning ------------------------------------------------------------------------------


def parse_value(text: str):
    """A grid value as ``--aug`` values are read: JSON where it parses (numbers, true), else
    text (``resnet``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``["lr=1e-3,3e-4", "aug.rotate_deg=5,15"]`` as ``{key: [values]}``, each key and value
    checked as a recipe would check it; errors name the ``--grid`` they come from."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        where = f"--grid {spec!r}"
        if not sep or not key or not values.strip():
            raise SweepError(f"{where} must look like KEY=V1,V2,...")
        option, _, sub = key.partition(".")
        if option in NOT_SWEPT:
            raise SweepError(f"{where}: {option} cannot be swept (it says where things are)")
        if sub and option not in recipes.TABLE_OPTIONS:
            raise SweepError(f"{where}: only {' and '.join(recipes.TABLE_OPTIONS)} take "
                             f"KEY.SUBKEY, not {option!r}")
        if key in grid:
            raise SweepError(f"{where}: {key} is swept twice")
        parsed = [parse_value(v) for v in values.split(",")]
        if len({json.dumps(v) for v in parsed}) != len(parsed):
            raise SweepError(f"{where}: a value is listed twice")
        try:
            for value in parsed:
                recipes.check_options({option: {sub: value} if sub else value}, where)
        except recipes.RecipeError as exc:
            raise SweepError(str(exc)) from None
        grid[key] = parsed
    if not grid:
        raise SweepError("give at least one --grid KEY=V1,V2,...")
    return grid


def combinations(grid: dict[str, list], draws: int | None = None, seed: int = 0
                 ) -> list[dict]:
    """Every combination of the grid's values in order, or ``draws`` distinct ones drawn
    with ``seed`` (all of them if there are fewer)."""
    keys = list(grid)
    every = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    if draws is None or draws >= len(every):
        return every
    picked = sorted(random.Random(seed).sample(range(len(every)), draws))
    return [every[i] for i in picked]


def apply_values(options: dict, values: dict) -> dict:
    """The base options with one trial's values on top (``aug.rotate_deg`` inside ``aug``)."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
    for key, value in values.items():
        option, _, sub = key.partition(".")
        if sub:
            merged[option] = {**merged.get(option, {}), sub: value}
        else:
            merged[option] = value
    return merged


def _digest(obj, n: int) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def trial_run_id(sweep_id: str, values: dict) -> str:
    """``<sweep id>-<values spelled out>-<hash of the values>``: readable in ``fkd runs``,
    the same for the same values every time, and unique whatever the spelling cut."""
    slug = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", f"{k}_{v}") for k, v in values.items())
    tail = _digest(values, 8)
    room = 128 - len(sweep_id) - len(tail) - 2
    slug = slug[:room].strip("-_.")
    return validate_run_id(f"{sweep_id}-{slug}-{tail}" if slug else f"{sweep_id}-{tail}")


def check_sweep_id(sweep_id: str) -> str:
    try:
        validate_run_id(sweep_id)
    except RunFileError as exc:
        raise SweepError(f"--sweep-id: {exc}") from None
    if len(sweep_id) > MAX_SWEEP_ID:
        raise SweepError(f"--sweep-id: at most {MAX_SWEEP_ID} characters (trial ids add "
                         f"the values), not {len(sweep_id)}")
    return sweep_id


@dataclass
class Trial:
    run_id: str
    values: dict
    options: dict
    config: object  # the TrainConfig the options make, checked before anything trains


@dataclass
class Sweep:
    sweep_id: str
    spec: dict  # base options, grid, draws, seed: what makes this sweep this sweep
    trials: list[Trial]
    recipe: dict | None = None  # the recipe file's provenance, when one was given


def plan(base: dict, grid: dict[str, list], *, draws: int | None = None,
         sweep_id: str | None = None, recipe: dict | None = None) -> Sweep:
    """The sweep's trials, each one's options turned into a training config now, so a value
    ``fkd train`` would refuse is an error naming it before the first trial trains.

    Without ``sweep_id`` the id is a digest of the sweep's settings: the same command
    names the same sweep, and resumes it."""
    base = {k: v for k, v in base.items() if k not in ("run_id", "models")}
    seed = int(base.get("seed", 0))
    spec = {"base": base, "grid": grid, "random": draws, "seed": seed}
    sweep_id = check_sweep_id(sweep_id or f"sweep-{_digest(spec, 10)}")
    if draws is not None and draws < 1:
        raise SweepError(f"--random must be at least 1, not {draws}")
    trials = []
    for values in combinations(grid, draws, seed):
        options = apply_values(base, values)
        try:
            config = recipes.train_config(options)
        except recipes.RecipeError as exc:
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
            raise SweepError(f"--grid {shown}: {exc}") from None
        trials.append(Trial(trial_run_id(sweep_id, values), values, options, config))
    return Sweep(sweep_id, spec, trials, recipe)


# -- the record ------------------------------------------------------------------------------


def sweep_folder(models_dir: str | os.PathLike, sweep_id: str) -> Path:
    return Path(models_dir) / SWEEPS_DIR / sweep_id


def _check_id(value, where: str) -> None:
    try:
        validate_run_id(value)
    except RunFileError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _check_record(record, path: Path) -> dict:
    """A sweep.json as read, every field the listing uses checked (it may be hand-edited)."""
    if not isinstance(record, dict):
        raise SweepError(f"{path}: must hold a JSON object")
    _check_id(record.get("sweep_id"), f"{path}: sweep_id")
    trials = record.get("trials")
    if not isinstance(trials, list):
        raise SweepError(f"{path}: trials must be a list")
    for i, t in enumerate(trials):
        where = f"{path}: trials[{i}]"
        if not isinstance(t, dict):
            raise SweepError(f"{where} must be a JSON object")
        _check_id(t.get("run_id"), f"{where}.run_id")
        if not isinstance(t.get("values"), dict):
            raise SweepError(f"{where}.values must be a JSON object")
        if t.get("status") not in STATES:
            raise SweepError(f"{where}.status must be one of {', '.join(STATES)}, "
                             f"not {str(t.get('status'))[:40]!r}")
        rmse = t.get("val_rmse")
        if rmse is not None and (isinstance(rmse, bool) or not isinstance(rmse, (int, float))
                                 or not math.isfinite(rmse) or rmse < 0):
            raise SweepError(f"{where}.val_rmse must be a non-negative number")
        if t.get("error") is not None and not isinstance(t["error"], str):
            raise SweepError(f"{where}.error must be text")
    if not isinstance(record.get("spec"), dict):
        raise SweepError(f"{path}: spec must be a JSON object")
    return record


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: unreadable ({exc})") from None
    return _check_record(record, path)


def write_record(path: Path, record: dict) -> None:
    record["updated"] = now_iso()
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    with atomic_write(path, encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def _sweep_lock(folder: Path, sweep_id: str):
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"sweep {sweep_id} is running in another process") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Summary:
    """One sweep as ``fkd sweeps`` lists it: progress and its best trial, or why broken."""

    sweep_id: str
    path: Path
    total: int = 0
    done: int = 0
    failed: int = 0
    best: dict | None = None
    updated: str = ""
    error: str | None = None
    trials: list = field(default_factory=list)


def summarise(record: dict, path: Path) -> Summary:
    trials = record["trials"]
    done = [t for t in trials if t["status"] == "done" and t.get("val_rmse") is not None]
    return Summary(
        record["sweep_id"], path, total=len(trials),
        done=sum(t["status"] == "done" for t in trials),
        failed=sum(t["status"] == "failed" for t in trials),
        best=min(done, key=lambda t: t["val_rmse"]) if done else None,
        updated=str(record.get("updated", "")), trials=trials,
    )


def list_sweeps(models_dir: str | os.PathLike) -> list[Summary]:
    """Every sweep under ``models_dir``, most recently updated first; a broken record is
    listed with the reason."""
    root = Path(models_dir) / SWEEPS_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.is_symlink() or folder.name.startswith("."):
            continue
        path = folder / RECORD
        try:
            found.append(summarise(read_record(path), path))
        except SweepError as exc:
            found.append(Summary(folder.name, path, error=str(exc)))
    return sorted(found, key=lambda s: s.updated, reverse=True)


# -- running -----------------------------------------------------------------------------------


def _cli_args(options: dict) -> list[str]:
    """``fkd train`` arguments that give exactly these (merged) options."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if key in recipes.TABLE_OPTIONS:
            for k, v in value.items():
                args += [flag, f"{k}={json.dumps(v)}"]
        else:
            args += [flag, str(value)]
    return args


def _last_error(log: Path) -> str:
    """The ``error:`` line a failed ``fkd train`` printed, else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "the trial process failed and left no output"
    errors = [ln for ln in lines if ln.startswith("error:")]
    text = errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else "")
    return text or "the trial process failed without a message"


def _val_rmse(run_dir: Path) -> float | None:
    from fkd_core.runs import read_run

    run = read_run(run_dir)
    return run.val_rmse if run.ok else None


def run_sweep(
    sweep: Sweep,
    models_dir: str | os.PathLike,
    *,
    train_set=None,
    corrections: dict | None = None,
    parallel: int = 1,
    on_event: Callable[..., None] | None = None,
    verbose: int | str = 0,
    config_file: Path | None = None,
    backend: str = "local",
    address: str | None = None,
    trial_cpus: float = 1,
    trial_gpus: float = 0,
) -> dict:
    """Train the sweep's trials whose run folder does not exist; returns the record.

    ``on_event(state, trial, index, total, **details)`` reports each trial: ``exists``,
    ``training``, ``done`` (``seconds``, ``val_rmse``) or ``failed`` (``error``). A failed
    trial is recorded with its error and the others go on; a re-run tries it again. In this
    process (``parallel=1``) trials train on ``train_set`` (with ``corrections`` recorded);
    with ``parallel > 1`` each is an ``fkd train`` subprocess (``config_file``: the recipe,
    so its provenance is recorded as ``fkd train --config`` records it).

    With ``backend="ray"`` each trial is a Ray task asking for ``trial_cpus`` CPUs and
    ``trial_gpus`` GPUs, on the cluster at ``address`` or on a local Ray instance started
    with room for ``parallel`` trials (and shut down after).
    """
    if backend not in BACKENDS:
        raise SweepError(f"--backend must be {' or '.join(BACKENDS)}, not {backend!r}")
    if backend == "ray":
        on_ray = ray_backend()
        if trial_cpus <= 0 or trial_gpus < 0:
            raise SweepError("--trial-cpus must be positive and --trial-gpus not negative")
    elif address:
        raise SweepError("--address is the Ray cluster's: give it with --backend ray")
    models_dir = Path(models_dir)
    folder = sweep_folder(models_dir, sweep.sweep_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD
    report = on_event or (lambda *a, **k: None)
    with _sweep_lock(folder, sweep.sweep_id):
        if path.exists():
            old = read_record(path)
            if old.get("spec") != json.loads(json.dumps(sweep.spec)):
                raise SweepError(f"sweep {sweep.sweep_id} exists with other settings ({path}); "
                                 "give another --sweep-id")
        record = {"sweep_id": sweep.sweep_id, "spec": sweep.spec, "recipe": sweep.recipe,
                  "created": now_iso(), "trials": []}
        if path.exists():
            record["created"] = old.get("created", record["created"])
        total = len(sweep.trials)
        todo = []
        for i, trial in enumerate(sweep.trials, 1):
            entry = {"run_id": trial.run_id, "values": trial.values, "status": "pending",
                     "error": None, "val_rmse": None, "seconds": None}
            record["trials"].append(entry)
            if (models_dir / trial.run_id).exists():
                from fkd_core.runs import read_run

                run = read_run(models_dir / trial.run_id)
                if run.ok:
                    entry.update(status="done", val_rmse=run.val_rmse)
                    report("exists", trial, i, total, val_rmse=run.val_rmse)
                else:  # never trained over: the folder is someone's to look at or remove
                    entry.update(status="failed", error=f"run folder {run.path} exists but is "
                                 f"broken ({run.error}); remove it to train this trial again")
                    report("failed", trial, i, total, error=entry["error"])
            else:
                todo.append((i, trial, entry))
        write_record(path, record)

        def finish(entry, trial, i, started, error=None):
            seconds = round(time.monotonic() - started, 1)
            if error is None:
                entry.update(status="done", error=None, seconds=seconds,
                             val_rmse=_val_rmse(models_dir / trial.run_id))
                report("done", trial, i, total, seconds=seconds, val_rmse=entry["val_rmse"])
            else:
                entry.update(status="failed", error=error, seconds=seconds)
                report("failed", trial, i, total, error=error)
            write_record(path, record)

        try:
            if backend == "ray":
                on_ray.run_trials(
                    sweep, todo, models_dir, folder, train_set, corrections, address=address,
                    cpus=trial_cpus, gpus=trial_gpus, parallel=parallel, report=report,
                    finish=finish, total=total, record=record, path=path,
                    write_record=write_record)
            elif parallel <= 1:
                _run_here(sweep, todo, models_dir, train_set, corrections, verbose, report,
                          finish, total, record, path)
            else:
                _run_processes(sweep, todo, models_dir, folder, parallel, config_file, report,
                               finish, total, record, path)
        finally:
            for entry in record["trials"]:  # interrupted: those never finished are pending
                if entry["status"] == "running":
                    entry["status"] = "pending"
            write_record(path, record)
    return record


def ray_backend():
    """:mod:`fkd_core.sweep_ray`, or a SweepError saying how to install Ray."""
    try:
        from fkd_core import sweep_ray
    except ImportError as exc:
        if exc.name != "ray" and not str(exc.name).startswith("ray."):
            raise
        raise SweepError("--backend ray needs Ray, an optional extra: pip install 'fkd[ray]'"
                         ) from None
    return sweep_ray


def trial_tags(sweep, trial) -> tuple[dict | None, dict]:
    """What a trial's run records of its sweep: the recipe with the trial's options (None
    without a recipe file) and the ``{"id", "values"}`` tag."""
    recipe = {**sweep.recipe, "options": trial.options} if sweep.recipe else None
    return recipe, {"id": sweep.sweep_id, "values": trial.values}


def train_trial(train_set, config, models_dir, run_id: str, *, corrections, recipe, sweep,
                verbose: int) -> str | None:
    """Train one trial in this process; its error as ``Type: message``, or None.

    Used by every backend that trains in a process it reuses (this one, a Ray worker).
    """
    import keras

    from fkd_core.training import train

    keras.backend.clear_session()  # a reused process does not pile up earlier trials' graphs
    try:
        train(train_set, config, models_dir, run_id=run_id, verbose=verbose,
              corrections=corrections, recipe=recipe, sweep=sweep)
    except Exception as exc:  # one trial's failure, whatever it is, is that trial's own
        return f"{type(exc).__name__}: {exc}"
    return None


def _run_here(sweep, todo, models_dir, train_set, corrections, verbose, report, finish, total,
              record, path):
    for i, trial, entry in todo:
        entry["status"] = "running"
        write_record(path, record)
        report("training", trial, i, total)
        started = time.monotonic()
        recipe, tag = trial_tags(sweep, trial)
        finish(entry, trial, i, started,
               train_trial(train_set, trial.config, models_dir, trial.run_id,
                           corrections=corrections, recipe=recipe, sweep=tag, verbose=verbose))


def _run_processes(sweep, todo, models_dir, folder, parallel, config_file, report, finish,
                   total, record, path):
    queue = list(todo)
    running: dict = {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                i, trial, entry = queue.pop(0)
                log = folder / f"{trial.run_id}.log"
                command = [sys.executable, "-m", "fkd_core.cli", "train",
                           *(["--config", str(config_file)] if config_file else []),
                           *_cli_args(trial.options), "--models", str(models_dir),
                           "--run-id", trial.run_id, "--sweep-tag",
                           json.dumps(trial_tags(sweep, trial)[1])]
                with open(log, "wb") as f:
                    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
                running[proc] = (i, trial, entry, log, time.monotonic())
                entry["status"] = "running"
                write_record(path, record)
                report("training", trial, i, total)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                i, trial, entry, log, started = running.pop(proc)
                finish(entry, trial, i, started,
                       None if proc.returncode == 0 else _last_error(log))
    finally:
        for proc in running:  # SIGTERM: each trial removes its own staging folder
            proc.terminate()
        for proc in running:
            proc.wait()
