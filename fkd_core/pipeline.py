"""A pipeline in one file: train the members a recipe lists, ensemble them, write the
submission.

Members whose run folder already exists are not trained again, and run folders appear only
when complete (:func:`fkd_core.runs.staged_run`), so a killed pipeline resumes where it
stopped. A run that exists but was trained on other data or with other options is an error,
never silently reused. The file format (see README, "How to write a recipe")::

    [[member]]                      # one table per member, trained in this order
    run_id = "faces15-resnet"       # its run folder under --models
    recipe = "faces15-resnet.toml"  # a train recipe, relative to this file (optional)
    seed = 1                        # any train option; overrides the recipe's

    [ensemble]                      # needed with two or more members
    run_id = "faces15-ensemble"
    weights = "auto"                # equal, auto, or one number per member

    [submission]
    tta = true                      # flip test-time augmentation (default true)
    debias = false                  # minus each model's mean validation error (default false)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fkd_core import recipes
from fkd_core.recipes import RecipeError

#: Train options a member cannot set: the pipeline gives every member the same data and
#: models folder (``fkd pipeline --data/--models``).
PIPELINE_OWNED = ("data", "models")
#: Options that may differ between the run on disk and the recipe without it being another
#: run: the time budget the pipeline passes down.
IGNORED_WHEN_RESUMING = ("max_minutes",)


@dataclass
class Member:
    run_id: str
    options: dict
    recipe: dict  # provenance recorded in the run's config.json


@dataclass
class Pipeline:
    path: Path
    sha256: str
    members: list[Member]
    ensemble: dict | None = None  # {"run_id", "weights"}
    tta: bool = True
    description: str = ""
    configs: list = field(default_factory=list)  # each member's TrainConfig, checked
    debias: bool = False  # minus each model's mean validation error (evaluation.submission)


class PipelineStopped(RuntimeError):
    """The pipeline stopped cleanly before its end (its time budget is spent)."""


def _table(value, where: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: {key} must be a table, not {type(value).__name__}")
    return value


def read_pipeline(path: str | Path) -> Pipeline:
    """A pipeline file, every member's options checked and merged with its recipe file."""
    from fkd_core.run_schema import RunFileError, validate_run_id

    path = Path(path)
    raw, digest = recipes.read_toml(path)
    where = str(path)
    known = ("description", "member", "ensemble", "submission")
    for key in raw:
        if key not in known:
            raise RecipeError(f"{where}: unknown key {key!r}; a pipeline holds "
                              f"{', '.join(known)} (a train recipe goes to fkd train --config)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"{where}: description must be text")
    entries = raw.get("member")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{where}: member must be one or more [[member]] tables")
    members = []
    for i, entry in enumerate(entries, start=1):
        here = f"{where}: member {i}"
        entry = dict(_table(entry, where, f"member {i}"))
        run_id = entry.get("run_id")
        if run_id is None:
            raise RecipeError(f"{here}: run_id is missing")
        try:
            validate_run_id(run_id)
        except RunFileError as exc:
            raise RecipeError(f"{here}: run_id: {exc}") from None
        options, provenance = {}, {"pipeline": str(path), "pipeline_sha256": digest}
        if "recipe" in entry:
            ref = entry.pop("recipe")
            if not isinstance(ref, str):
                raise RecipeError(f"{here}: recipe must be text (a file path)")
            recipe = recipes.read_recipe(path.parent / ref)
            options = recipe.options
            provenance.update(recipe.provenance())
            for key in PIPELINE_OWNED:
                if key in options:
                    raise RecipeError(f"{recipe.path}: {key} cannot be set in a pipeline's "
                                      f"member (fkd pipeline --{key} sets it for all)")
        for key in PIPELINE_OWNED:
            if key in entry:
                raise RecipeError(f"{here}: {key} cannot be set in a pipeline's member "
                                  f"(fkd pipeline --{key} sets it for all)")
        options = recipes.merge(options, recipes.check_options(entry, here, path.parent))
        if run_id in (m.run_id for m in members):
            raise RecipeError(f"{here}: run_id {run_id!r} is used by another member")
        members.append(Member(run_id, options, provenance))
    ensemble = raw.get("ensemble")
    if ensemble is not None:
        ensemble = _check_ensemble(_table(ensemble, where, "ensemble"), where, len(members))
    elif len(members) > 1:
        raise RecipeError(f"{where}: {len(members)} members need an [ensemble] table")
    submission = _table(raw.get("submission", {}), where, "submission")
    for key in submission:
        if key not in ("tta", "debias"):
            raise RecipeError(f"{where}: unknown key {key!r} in [submission] "
                              "(known: tta, debias)")
    flags = {key: submission.get(key, key == "tta") for key in ("tta", "debias")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: submission.{key} must be true or false, not {value!r}")
    pipeline = Pipeline(path, digest, members, ensemble, flags["tta"], description,
                        debias=flags["debias"])
    for m in members:  # every member checked before anything trains
        try:
            pipeline.configs.append(recipes.train_config(m.options))
        except RecipeError as exc:
            raise RecipeError(f"{where}: member {m.run_id}: {exc}") from None
    return pipeline


def _check_ensemble(table: dict, where: str, n_members: int) -> dict:
    from fkd_core.run_schema import RunFileError, validate_run_id

    for key in table:
        if key not in ("run_id", "weights"):
            raise RecipeError(f"{where}: unknown key {key!r} in [ensemble] "
                              "(known: run_id, weights)")
    if n_members < 2:
        raise RecipeError(f"{where}: [ensemble] needs two or more members, not {n_members}")
    try:
        run_id = validate_run_id(table.get("run_id"))
    except RunFileError as exc:
        raise RecipeError(f"{where}: ensemble.run_id: {exc}") from None
    weights = table.get("weights", "equal")
    if isinstance(weights, list):
        if len(weights) != n_members or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                for w in weights):
            raise RecipeError(f"{where}: ensemble.weights must be {n_members} non-negative "
                              "numbers, one per member")
        weights = ",".join(str(w) for w in weights)
    elif weights not in ("equal", "auto"):
        raise RecipeError(f"{where}: ensemble.weights must be equal, auto or a list of "
                          f"numbers, not {weights!r}")
    return {"run_id": run_id, "weights": weights}


def _comparable(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in IGNORED_WHEN_RESUMING}


def existing_member(member: Member, models_dir: Path, fingerprint: str):
    """The member's finished run if there is one (None if not); an error if the folder
    holds something else: a broken run, other data, or other options."""
    from fkd_core import runs

    if not (models_dir / member.run_id).exists():
        return None
    run = runs.read_run(models_dir / member.run_id)
    if not run.ok:
        raise RecipeError(f"run {member.run_id} exists but is broken ({run.error}); "
                          "remove it to train it again")
    if (run.config.get("data") or {}).get("fingerprint") != fingerprint:
        raise RecipeError(f"run {member.run_id} exists but was trained on other data")
    stored = (run.config.get("recipe") or {}).get("options")
    if stored is None or _comparable(stored) != _comparable(member.options):
        raise RecipeError(f"run {member.run_id} exists but was not trained with this member's "
                          "options; remove it or give the member another run_id")
    return run


Event = Callable[..., None]


def run_pipeline(pipeline: Pipeline, data, models_dir: str | Path, *,
                 max_minutes: float | None = None, on_event: Event | None = None,
                 verbose: int | str = "auto"):
    """Train the missing members, ensemble them and return the run whose predictions make
    the submission (the ensemble, or the only member); the caller writes the submission.

    ``data`` is loaded :class:`~fkd_core.dataset.KaggleData` with its training part.
    ``on_event(kind, **details)`` reports progress: ``member`` (index, total, run_id,
    state = "exists", "training" or "trained", run), ``ensemble`` (run_id, state, run).
    With ``max_minutes`` each member trains for at most the time left, and
    :class:`PipelineStopped` is raised when none is left before a step.
    """
    import dataclasses

    from fkd_core import corrections as log
    from fkd_core import runs
    from fkd_core.composite import make_ensemble
    from fkd_core.training import train

    emit = on_event or (lambda kind, **details: None)
    models_dir = Path(models_dir)
    train_set = data.require_train()
    deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
    done = []
    total = len(pipeline.members)

    def minutes_left(before: str) -> float | None:
        if deadline is None:
            return None
        left = (deadline - time.monotonic()) / 60.0
        if left <= 0:
            raise PipelineStopped(
                f"--max-minutes {max_minutes:g} is spent before {before} ({len(done)} of "
                f"{total} members done); run the same command again to continue")
        return left

    for i, (member, config) in enumerate(zip(pipeline.members, pipeline.configs), start=1):
        run = existing_member(member, models_dir, train_set.fingerprint)
        if run is not None:
            emit("member", index=i, total=total, run_id=member.run_id, state="exists", run=run)
            done.append(run)
            continue
        left = minutes_left(f"member {member.run_id}")
        if left is not None:
            config = dataclasses.replace(
                config, max_minutes=min(config.max_minutes or left, left))
        member_data, applied = train_set, None
        if member.options.get("corrections"):
            try:
                member_data, applied = log.corrected(train_set, member.options["corrections"])
            except (log.CorrectionsError, OSError) as exc:
                raise RecipeError(f"member {member.run_id}: {exc}") from None
        emit("member", index=i, total=total, run_id=member.run_id, state="training",
             minutes=left)
        path = train(member_data, config, models_dir, run_id=member.run_id, verbose=verbose,
                     corrections=applied,
                     recipe={**member.recipe, "options": member.options})
        run = runs.resolve(path)
        emit("member", index=i, total=total, run_id=member.run_id, state="trained", run=run)
        done.append(run)

    if pipeline.ensemble is None:
        return done[0]
    ens_id = pipeline.ensemble["run_id"]
    if (models_dir / ens_id).exists():
        run = runs.read_run(models_dir / ens_id)
        if not run.ok or run.config.get("members") != [r.id for r in done]:
            raise RecipeError(f"run {ens_id} exists but is not this pipeline's ensemble of "
                              f"{', '.join(r.id for r in done)}; remove it to make it again")
        emit("ensemble", run_id=ens_id, state="exists", run=run)
        return run
    minutes_left(f"the ensemble {ens_id}")
    emit("ensemble", run_id=ens_id, state="making")
    run = runs.resolve(make_ensemble(done, weights=pipeline.ensemble["weights"],
                                     models_dir=models_dir, run_id=ens_id))
    emit("ensemble", run_id=ens_id, state="made", run=run)
    return run
