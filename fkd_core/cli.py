"""The ``fkd`` command line. Commands import heavy modules lazily: reading data never pays
for importing TensorFlow."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="fkd — facial keypoint detection workbench.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect Kaggle data and write the demo set.", no_args_is_help=True)
app.add_typer(data_app, name="data")
labels_app = typer.Typer(help="Find suspicious labels and keep corrections beside the data.",
                         no_args_is_help=True)
app.add_typer(labels_app, name="labels")

out = Console()
err = Console(stderr=True)

DATA_HELP = "Kaggle data folder or archive (default: $FKD_DATA, else the demo set)."
MODELS_HELP = "Folder of runs (default: $FKD_MODELS, else models/)."


DATA_OPTION = typer.Option(None, "--data", help=DATA_HELP)
MODELS_OPTION = typer.Option(None, "--models", help=MODELS_HELP)


def _data_path(data: Path | None) -> Path:
    from fkd_core import dataset, settings

    return settings.data_path(data) or dataset.demo_path()


def _models_dir(models: Path | None) -> Path:
    from fkd_core import settings

    return settings.models_dir(models)


def _run_id(run_id: str | None) -> str | None:
    """A --run-id checked before any work, so a bad one never costs a training."""
    from fkd_core.run_schema import RunFileError, validate_run_id

    if run_id is None:
        return None
    try:
        return validate_run_id(run_id)
    except RunFileError as exc:
        fail(f"--run-id: {exc}")


def fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str):
    """A rich progress bar fed by the library's ``progress(done, total)`` callbacks."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal,
    ) as bar:
        tasks: dict[int, int] = {}

        def update(done: int, total: int):
            if total not in tasks:
                tasks[total] = bar.add_task(description, total=total)
            bar.update(tasks[total], completed=done)

        yield update


@contextmanager
def data_errors():
    """Turn data-format errors into a one-line message and exit code 1."""
    from fkd_core.kaggle import KaggleFormatError

    try:
        yield
    except KaggleFormatError as exc:
        fail(str(exc))


@data_app.command("summary")
def data_summary(
    path: Path = typer.Argument(..., help="Folder or archive holding Kaggle's files."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Parse afresh, ignoring the cache."),
):
    """Validate the Kaggle files at PATH and summarise them."""
    from fkd_core import dataset

    with data_errors(), progress_bar("parsing images") as progress:
        data = dataset.load(path, use_cache=not no_cache, progress=progress)
    summary = data.summary()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"[bold]{path}[/]")
    for name, where in summary["files"].items():
        out.print(f"  {name:<22} {where}", highlight=False)
    if "training" in summary:
        t = summary["training"]
        pct = 100.0 * t["complete_rows"] / max(t["rows"], 1)
        out.print(f"training rows        {t['rows']}")
        out.print(f"complete rows        {t['complete_rows']} ({pct:.1f}%)")
        out.print(f"four-keypoint rows   {t['four_point_rows']}")
        offset = t["label_x_offset"]
        note = "Kaggle's pixel-index convention" if offset == 0 else "training corrects for it"
        out.print(f"label x offset       {offset:+.2f} px ({note})")
    if "test_images" in summary:
        out.print(f"test images          {summary['test_images']}")
    if "lookup_rows" in summary:
        out.print(
            f"lookup rows          {summary['lookup_rows']} "
            f"(for {summary['lookup_images']} images)"
        )
    if "sample_submission_rows" in summary:
        out.print(f"sample submission    {summary['sample_submission_rows']} rows")
    if "training" in summary:
        table = Table("keypoint", "labelled", "x range", "y range", box=None)
        for name, k in summary["training"]["keypoints"].items():
            xr = "–" if k["x_range"] is None else "{:.1f}–{:.1f}".format(*k["x_range"])
            yr = "–" if k["y_range"] is None else "{:.1f}–{:.1f}".format(*k["y_range"])
            table.add_row(name, str(k["labelled"]), xr, yr)
        out.print(table)


@data_app.command("demo")
def data_demo(
    out_dir: Path = typer.Argument(..., help="Folder to write the demo set into."),
    train: int = typer.Option(2000, "--train", min=1, help="Training faces."),
    test: int = typer.Option(500, "--test", min=1, help="Test faces."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    source_offset: str = typer.Option(
        "0,0", "--source-offset", metavar="DX,DY",
        help="Move the four-keypoint rows' labels by DX,DY pixels: a second labelling source "
        "with its own convention."),
):
    """Write the embedded demo set (procedurally drawn faces) in Kaggle's format."""
    from fkd_core import synthetic

    try:
        dx, dy = (float(v) for v in source_offset.split(","))
    except ValueError:
        fail(f"--source-offset must be two numbers DX,DY, not {source_offset!r}")
    if not (abs(dx) <= 10 and abs(dy) <= 10):
        fail(f"--source-offset must be within ±10 px, not {source_offset!r}")
    with progress_bar("drawing faces") as progress:
        written = synthetic.write_demo(out_dir, n_train=train, n_test=test, seed=seed,
                                       progress=progress, source_offset=(dx, dy))
    out.print(f"wrote {train} training and {test} test faces to {out_dir}")
    for name in ("training", "test", "lookup", "sample_submission"):
        if name in written:
            out.print(f"  {written[name]}", highlight=False)


def _load_train(data: Path | None):
    from fkd_core import dataset

    path = _data_path(data)
    with data_errors(), progress_bar("parsing images") as progress:
        return dataset.load(path, parts=("training",), progress=progress).require_train()


def _corrected(train_set, corrections: Path | None):
    """The training set with a corrections log applied (and what a run records of it)."""
    from fkd_core import corrections as log

    if corrections is None:
        return train_set, None
    if not corrections.is_file():
        fail(f"--corrections: {corrections} does not exist")
    try:
        return log.corrected(train_set, corrections)
    except log.CorrectionsError as exc:
        fail(str(exc))


TRAIN_OPTION_NAMES = ("data", "arch", "head", "width", "depth", "dropout", "head_opt", "epochs",
                      "batch_size", "lr", "schedule", "patience", "augment", "aug",
                      "val_fraction", "holdout_fraction", "seed", "max_minutes",
                      "steps_per_epoch", "models", "run_id", "corrections", "source_offset",
                      "strategy", "precision", "ema", "pseudo_labels", "pseudo_weight")


def _given_options(ctx: typer.Context, names) -> dict:
    """The options typed on the command line (not defaults), as a recipe would spell them.

    Click's ParameterSource is compared by name: Typer ships its own copy of Click."""
    from fkd_core import recipes

    given = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params[name]
        if name in recipes.TABLE_OPTIONS:
            try:
                value = recipes.key_values(value, "--" + name.replace("_", "-"))
            except recipes.RecipeError as exc:
                fail(str(exc))
        elif isinstance(value, Path):
            value = str(value)
        given[name] = value
    return given


def _option_path(options: dict, key: str) -> Path | None:
    return Path(options[key]) if options.get(key) else None


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    config_file: Path = typer.Option(None, "--config", help="Recipe file (TOML) holding any of "
                                     "these options; options given here override it."),
    data: Path = DATA_OPTION,
    arch: str = typer.Option("resnet", "--arch", help="Architecture name (see `fkd archs`)."),
    head: str = typer.Option("heatmap", "--head", help="heatmap or regression."),
    width: float = typer.Option(1.0, "--width", help="Channel multiplier."),
    depth: int = typer.Option(None, "--depth", help="Number of stages (default per arch)."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout rate (default per arch)."),
    head_opt: list[str] = typer.Option([], "--head-opt", help="Head option KEY=VALUE."),
    epochs: int = typer.Option(30, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per step per "
                                    "replica (see --strategy)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (Adam)."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or plateau."),
    patience: int = typer.Option(10, "--patience", help="Early-stopping patience (epochs)."),
    augment: str = typer.Option("default", "--augment", help="Augmentation preset: default, none."),
    aug: list[str] = typer.Option([], "--aug", help="Augmentation override KEY=VALUE, e.g. "
                                  "rotate_deg=20 or noise_prob=0."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Rows that steer training "
                                       "(early stopping, schedule) and are scored."),
    holdout_fraction: float = typer.Option(
        0.0, "--holdout-fraction",
        help="Rows set aside untouched and scored only at the end (the honest score)."),
    seed: int = typer.Option(0, "--seed"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop after this much time."),
    steps_per_epoch: int = typer.Option(None, "--steps-per-epoch", help="Cap steps per epoch."),
    models: Path = MODELS_OPTION,
    run_id: str = typer.Option(None, "--run-id", help="Folder name (default: time-arch-head)."),
    corrections: Path = typer.Option(None, "--corrections", help="Label corrections log to "
                                     "apply on top of training.csv (see `fkd labels`)."),
    source_offset: str = typer.Option(
        "off", "--source-offset", help="learn: fit one (x, y) offset for the four-keypoint "
        "rows' labelling convention, used for them and for the 8-value lookup rows."),
    strategy: str = typer.Option(
        "auto", "--strategy", help="default (one device), mirrored (every local GPU), "
        "multiworker (the machines TF_CONFIG lists) or auto (multiworker if TF_CONFIG is set, "
        "else mirrored with 2+ GPUs, else default). --batch-size is per replica: the global "
        "batch is batch size x replicas and --lr is scaled by the replicas too."),
    precision: str = typer.Option("float32", "--precision", help="float32, or mixed "
                                  "(float16 compute; needs a GPU)."),
    ema: float = typer.Option(None, "--ema", help="Evaluate and save an exponential moving "
                              "average of the weights with this momentum (e.g. 0.999)."),
    pseudo_labels: str = typer.Option(
        None, "--pseudo-labels", metavar="RUN", help="Fill each training face's missing "
        "keypoints with this run's flip-TTA predictions (never over a real label)."),
    pseudo_weight: float = typer.Option(
        0.5, "--pseudo-weight", help="A pseudo-label's weight in the loss (a real label's is 1)."),
    sweep_tag: str = typer.Option(None, "--sweep-tag", hidden=True,
                                  help="JSON {id, values} of the sweep trial this run is."),
):
    """Train a model; the run folder appears under --models only when it is complete."""
    from fkd_core import distribute, recipes
    from fkd_core.training import train

    try:
        recipe = recipes.read_recipe(config_file) if config_file is not None else None
        options = recipes.merge(recipe.options if recipe else {},
                                _given_options(ctx, TRAIN_OPTION_NAMES))
        if distribute.resolve(options.get("strategy", "auto")) == "multiworker":
            distribute.prepare("multiworker")  # before checking the arch runs TensorFlow
        config = recipes.train_config(options)
    except (recipes.RecipeError, distribute.DistributeError) as exc:
        fail(str(exc))
    run_id = _run_id(options.get("run_id"))
    sweep = _sweep_tag(sweep_tag)
    train_set, applied = _corrected(_load_train(_option_path(options, "data")),
                                    _option_path(options, "corrections"))
    try:
        out_path = train(
            train_set, config, _models_dir(_option_path(options, "models")), run_id=run_id,
            verbose=_verbose(), corrections=applied,
            recipe={**recipe.provenance(), "options": options} if recipe else None,
            sweep=sweep,
        )
    except KeyboardInterrupt:
        fail("training interrupted; no run was saved", code=130)
    except (ValueError, FileExistsError, FloatingPointError) as exc:
        fail(str(exc))
    if out_path is None:
        out.print("worker finished; the chief worker writes the run folder")
        return
    _print_run_result(out_path)


def _sweep_tag(text: str | None) -> dict | None:
    """The sweep trial a ``fkd sweep --parallel`` subprocess trains, as its config records it."""
    if text is None:
        return None
    try:
        tag = json.loads(text)
    except ValueError:
        tag = None
    if not (isinstance(tag, dict) and set(tag) == {"id", "values"}
            and isinstance(tag["id"], str) and isinstance(tag["values"], dict)):
        fail(f"--sweep-tag must be JSON {{\"id\": ..., \"values\": {{...}}}}, not {text!r}")
    return tag


def _values(values: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


@app.command("sweep", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": True})
def sweep_cmd(
    ctx: typer.Context,
    grid: list[str] = typer.Option([], "--grid", metavar="KEY=V1,V2", help="Values to try for "
                                   "one train option (lr, dropout, width, arch, "
                                   "aug.rotate_deg, ...); repeat for more options."),
    draws: int = typer.Option(None, "--random", min=1, help="Train N random combinations "
                              "(drawn with --seed) instead of all of them."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) or ray "
                                "(each trial a Ray task; pip install 'fkd[ray]')."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Trials at once: local, each "
                                 "an `fkd train` process; ray without --address, the room "
                                 "of the local Ray instance started for the sweep."),
    address: str = typer.Option(None, "--address", help="Ray cluster to run the trials on "
                                "(e.g. 10.0.0.1:6379 or auto); the models folder must be "
                                "shared storage at the same path on every node."),
    trial_cpus: float = typer.Option(1, "--trial-cpus", help="CPUs Ray gives each trial."),
    trial_gpus: float = typer.Option(0, "--trial-gpus", help="GPUs Ray gives each trial."),
    sweep_id: str = typer.Option(None, "--sweep-id", help="Name of the sweep (default: from "
                                 "its settings, so the same command resumes it)."),
):
    """Train every combination of the --grid values (every other option is fkd train's, a
    --config recipe included) as runs tagged with the sweep; run it again to resume."""
    from fkd_core import recipes, sweeps

    if backend not in sweeps.BACKENDS:
        fail(f"--backend must be {' or '.join(sweeps.BACKENDS)}, not {backend!r}")
    if backend == "ray":
        try:
            sweeps.ray_backend()
        except sweeps.SweepError as exc:
            fail(escape(str(exc)))
    train_command = ctx.parent.command.get_command(ctx.parent, "train")
    train_ctx = train_command.make_context("sweep", list(ctx.args), parent=ctx.parent)
    config_file = train_ctx.params.get("config_file")
    if train_ctx.params.get("sweep_tag") is not None:
        fail("--sweep-tag is set by fkd sweep itself")
    try:
        recipe = recipes.read_recipe(config_file) if config_file is not None else None
        options = recipes.merge(recipe.options if recipe else {},
                                _given_options(train_ctx, TRAIN_OPTION_NAMES))
    except recipes.RecipeError as exc:
        fail(str(exc))
    if options.get("run_id"):
        fail("--run-id: a sweep names its trials' runs itself (give --sweep-id)")
    data_path = _data_path(_option_path(options, "data"))
    options["data"] = str(data_path.resolve())
    if options.get("corrections"):
        options["corrections"] = str(Path(options["corrections"]).resolve())
    models_dir = _models_dir(_option_path(options, "models"))
    try:
        sweep = sweeps.plan(options, sweeps.parse_grid(grid), draws=draws, sweep_id=sweep_id,
                            recipe=recipe.provenance() if recipe else None)
    except (sweeps.SweepError, recipes.RecipeError) as exc:
        fail(str(exc))
    train_set, applied = _corrected(_load_train(data_path),
                                    _option_path(options, "corrections"))
    where = (f", as Ray tasks ({trial_cpus:g} CPU, {trial_gpus:g} GPU each) on "
             + (escape(address) if address else f"a local Ray instance, {parallel} at a time")
             if backend == "ray" else f", {parallel} at a time" if parallel > 1 else "")
    out.print(f"sweep [bold]{escape(sweep.sweep_id)}[/]: {len(sweep.trials)} trials{where}",
              highlight=False, soft_wrap=True)

    def report(state, trial, index, total, **d):
        name = f"[{index}/{total}] {escape(trial.run_id)}"
        if state == "training":
            out.print(f"{name}: training ({escape(_values(trial.values))})", highlight=False,
                      soft_wrap=True)
        elif state == "failed":
            out.print(f"{name}: [red]failed[/]: {escape(d['error'])}", highlight=False,
                      soft_wrap=True)
        else:
            took = "already there, kept" if state == "exists" else f"done in {_age(d['seconds'])}"
            out.print(f"{name}: {took}, val RMSE {_px(d.get('val_rmse'))} px", highlight=False,
                      soft_wrap=True)

    try:
        record = sweeps.run_sweep(sweep, models_dir, train_set=train_set, corrections=applied,
                                  parallel=parallel, on_event=report, verbose=_verbose(),
                                  config_file=config_file, backend=backend, address=address,
                                  trial_cpus=trial_cpus, trial_gpus=trial_gpus)
    except KeyboardInterrupt:
        fail("sweep interrupted; finished trials are kept, rerun to continue", code=130)
    except sweeps.SweepError as exc:
        fail(escape(str(exc)))
    summary = sweeps.summarise(record, sweeps.sweep_folder(models_dir, sweep.sweep_id))
    if summary.best:
        out.print(f"best trial {escape(summary.best['run_id'])}: val RMSE "
                  f"{summary.best['val_rmse']:.3f} px ({escape(_values(summary.best['values']))})",
                  highlight=False, soft_wrap=True)
    if summary.failed:
        fail(f"{summary.failed} of {summary.total} trials failed (recorded in "
             f"{summary.path / sweeps.RECORD}); rerun the same command to try them again")


@app.command("sweeps")
def sweeps_cmd(models: Path = MODELS_OPTION):
    """List sweeps: progress (done, failed, total) and the best trial by validation RMSE."""
    from fkd_core import sweeps

    models = _models_dir(models)
    found = sweeps.list_sweeps(models)
    if not found:
        out.print(f"no sweeps in {escape(str(models))} yet — start one with: fkd sweep "
                  "--grid lr=1e-3,3e-4")
        return
    for s in found:  # one line each: run ids are long, and a table would cut them
        if s.error:
            out.print(f"[red]broken[/] sweep {escape(s.sweep_id)}: {escape(s.error)}",
                      highlight=False, soft_wrap=True)
            continue
        best = (f"best {escape(s.best['run_id'])}, val RMSE {s.best['val_rmse']:.3f} px "
                f"({escape(_values(s.best['values']))})" if s.best else "no trial done yet")
        out.print(f"sweep [bold]{escape(s.sweep_id)}[/]: {s.done}/{s.total} done, {s.failed} "
                  f"failed; {best}", highlight=False, soft_wrap=True)


def _print_run_result(path: Path) -> None:
    from fkd_core import runs

    run = runs.read_run(path)
    if not run.ok:
        fail(f"run {path} was written but does not read back: {run.error}")
    m, c = run.metrics, run.config
    out.print(f"run [bold]{escape(str(path))}[/]")
    tta = m.get("val_rmse_tta")
    out.print(
        f"validation RMSE {m['val_rmse']:.3f} px"
        + (f", with flip-TTA {tta:.3f} px" if tta is not None else "")
        + f" ({c.get('epochs_run') or '–'} epochs, {(c.get('train_seconds') or 0) / 60:.1f} min)"
    )
    if m.get("holdout_rmse") is not None:
        out.print(f"hold-out RMSE {m['holdout_rmse']:.3f} px, with flip-TTA "
                  f"{m['holdout_rmse_tta']:.3f} px ({m['holdout_images']} untouched faces)")


def _run(run: str, models: Path | None):
    from fkd_core import runs

    try:
        return runs.resolve(run, _models_dir(models))
    except ValueError as exc:
        fail(str(exc))


def _verbose() -> int:
    return 1 if sys.stdout.isatty() else 2


def _px(value) -> str:
    return "–" if value is None else f"{value:.3f}"


@app.command("runs")
def runs_cmd(
    models: Path = MODELS_OPTION,
    clean: bool = typer.Option(False, "--clean", help="Delete staging folders left by killed "
                               "trainings (never one a live process is writing)."),
):
    """List trained runs, best validation RMSE first; broken ones with the reason; staging
    folders left by killed trainings."""
    from fkd_core import runs

    models = _models_dir(models)
    if clean:
        for s in runs.clean_stale(models):
            out.print(f"removed {escape(str(s.path))} (run {escape(s.run_id)}, "
                      f"{_age(s.age_seconds)} old)", highlight=False)
    found = runs.list_runs(models)
    if not found:
        out.print(f"no runs in {escape(str(models))} yet — make one with: fkd train --epochs 5")
    else:
        table = Table("run", "kind", "arch", "val RMSE", "flip-TTA", "hold-out", "epochs",
                      "minutes", box=None)
        ok = sorted((r for r in found if r.ok), key=lambda r: r.val_rmse)
        for r in ok:
            c = r.config
            table.add_row(
                escape(r.id), escape(r.kind), escape(r.arch), _px(r.val_rmse),
                _px(r.metrics.get("val_rmse_tta")), _px(r.metrics.get("holdout_rmse")),
                str(c.get("epochs_run") or "–"), f"{(c.get('train_seconds') or 0) / 60:.1f}",
            )
        out.print(table)
        for r in found:
            if not r.ok:
                out.print(f"[red]broken[/] {escape(r.id)}: {escape(r.error)}", highlight=False)
    for s in runs.stale_staging(models, include_live=True):
        state = "being written now" if s.live else "left by a killed training"
        out.print(f"[yellow]staging[/] {escape(s.path.name)}: run {escape(s.run_id)}, {state}, "
                  f"{_age(s.age_seconds)} old" + ("" if s.live else " (fkd runs --clean "
                                                   "removes it)"), highlight=False)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="Run id (under --models) or run folder."),
    data: Path = DATA_OPTION,
    models: Path = MODELS_OPTION,
    subset: str = typer.Option("val", "--subset", help="val, holdout, train or all."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Horizontal-flip test-time augment."),
    worst: int = typer.Option(10, "--worst", help="How many worst images to list."),
):
    """Per-keypoint and per-image errors of a run, in pixels."""
    from fkd_core.evaluation import evaluate

    found = _run(run, models)
    train_set = _load_train(data)
    try:
        ev = evaluate(found, train_set, subset=subset, tta=tta)
    except ValueError as exc:
        fail(str(exc))
    out.print(f"run {escape(found.id)} on {len(ev.row_ids)} {subset} faces"
              f"{' with flip-TTA' if tta else ''}: RMSE [bold]{ev.rmse:.3f}[/] px")
    table = Table("keypoint", "RMSE px", box=None)
    for name, v in ev.per_keypoint.items():
        table.add_row(name, "–" if v != v else f"{v:.3f}")
    out.print(table)
    images = ev.per_image().head(worst)
    table = Table("worst rows", "csv line", "RMSE px", "keypoints", box=None)
    for row in images.itertuples():
        table.add_row(str(row.row), str(row.line), f"{row.rmse:.3f}", str(row.labelled))
    out.print(table)


@app.command("submit")
def submit_cmd(
    run: str = typer.Argument(..., help="Run id (under --models) or run folder."),
    data: Path = DATA_OPTION,
    output: Path = typer.Option(Path("submission.csv"), "-o", "--output",
                                help="File to write (its folder must exist)."),
    models: Path = MODELS_OPTION,
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Horizontal-flip test-time augment."),
):
    """Write Kaggle's RowId,Location submission for the rows IdLookupTable.csv asks."""
    from fkd_core import dataset
    from fkd_core.evaluation import submission, write_submission
    from fkd_core.files import check_output_file

    try:  # before minutes of predicting, not after
        check_output_file(output)
    except ValueError as exc:
        fail(f"-o: {exc}")
    found = _run(run, models)
    with data_errors(), progress_bar("parsing images") as progress:
        kd = dataset.load(_data_path(data), parts=("test", "lookup"), progress=progress)
        try:
            frame = submission(found, kd, tta=tta)
        except ValueError as exc:
            fail(str(exc))
    try:
        write_submission(frame, output)
    except OSError as exc:
        fail(f"-o: could not write {output}: {exc.strerror or exc}")
    out.print(f"wrote {len(frame)} predictions for {kd.lookup.ImageId.nunique()} test images "
              f"to {escape(str(output))}")


@app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="Run id (under --models) or run folder."),
    fmt: str = typer.Option(..., "--format", help="savedmodel (a folder) or tflite (a file)."),
    quantize: str = typer.Option(None, "--quantize", help="dynamic: int8 weights (tflite)."),
    output: Path = typer.Option(..., "-o", "--output", help="File or folder to create; "
                                "never replaces an existing one."),
    models: Path = MODELS_OPTION,
):
    """Export a run for deployment; the export records the run's label offset, so
    `fkd predict` on a .tflite file answers like the run."""
    from fkd_core import export

    if fmt not in export.FORMATS:
        fail(f"--format must be {' or '.join(export.FORMATS)}, not {fmt!r}", code=2)
    if quantize is not None and quantize not in export.QUANTIZE:
        fail(f"--quantize must be {' or '.join(export.QUANTIZE)}, not {quantize!r}", code=2)
    if quantize is not None and fmt != "tflite":
        fail("--quantize is for --format tflite only", code=2)
    found = _run(run, models)
    try:
        path = export.export_run(found, output, fmt, quantize=quantize)
    except (export.ExportError, OSError) as exc:
        fail(f"-o: {exc}")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size
    out.print(f"wrote {escape(str(path))} ({fmt}{', quantised' if quantize else ''}, "
              f"{size / 1e6:.2f} MB) from run {escape(found.id)}", highlight=False,
              soft_wrap=True)


@app.command("train-specialists")
def train_specialists_cmd(
    base: str = typer.Option(..., "--base", help="Base run to fine-tune from."),
    by: str = typer.Option("group", "--by", help="keypoint (15 models) or group (4)."),
    data: Path = DATA_OPTION,
    models: Path = MODELS_OPTION,
    epochs: int = typer.Option(10, "--epochs", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    patience: int = typer.Option(5, "--patience"),
    steps_per_epoch: int = typer.Option(None, "--steps-per-epoch"),
    run_id: str = typer.Option(None, "--run-id"),
):
    """Fine-tune one specialist per keypoint or group from a base run; save them as one run."""
    from fkd_core.composite import train_specialists

    run_id = _run_id(run_id)
    found = _run(base, models)
    if found.kind != "single":
        fail(f"--base must be a single-model run, not a {found.kind} run")
    train_set = _load_train(data)
    if found.config.get("data", {}).get("fingerprint") != train_set.fingerprint:
        fail(f"run {found.id} was trained on other data; pass the same --data")
    try:
        path = train_specialists(
            train_set, found, by=by, models_dir=_models_dir(models), epochs=epochs, lr=lr,
            patience=patience, run_id=run_id, verbose=_verbose(),
            steps_per_epoch=steps_per_epoch,
        )
    except KeyboardInterrupt:
        fail("training interrupted; no run was saved", code=130)
    except (ValueError, FileExistsError, FloatingPointError) as exc:
        fail(str(exc))
    _print_run_result(path)


@app.command("ensemble")
def ensemble_cmd(
    members: list[str] = typer.Argument(..., help="Two or more run ids or folders."),
    weights: str = typer.Option("equal", "--weights",
                                help="equal, auto (from validation RMSE) or w1,w2,..."),
    models: Path = MODELS_OPTION,
    run_id: str = typer.Option(None, "--run-id"),
):
    """Average runs into a new run with its own metrics and predictions."""
    from fkd_core.composite import make_ensemble

    run_id = _run_id(run_id)
    found = [_run(m, models) for m in members]
    try:
        path = make_ensemble(found, weights=weights, models_dir=_models_dir(models),
                             run_id=run_id)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    _print_run_result(path)


@app.command("pipeline")
def pipeline_cmd(
    recipe: Path = typer.Argument(..., help="Pipeline file (TOML): members, ensemble, "
                                  "submission."),
    data: Path = DATA_OPTION,
    models: Path = MODELS_OPTION,
    max_minutes: float = typer.Option(None, "--max-minutes", min=0,
                                      help="Cap on the whole pipeline's wall time."),
    output: Path = typer.Option(Path("submission.csv"), "-o", "--output",
                                help="Submission file to write (its folder must exist)."),
):
    """Train the members a pipeline file lists that don't exist yet, ensemble them and write
    the submission; run it again after a kill and it resumes where it stopped."""
    from fkd_core import dataset, pipeline
    from fkd_core.evaluation import submission, write_submission
    from fkd_core.files import check_output_file
    from fkd_core.recipes import RecipeError

    try:
        check_output_file(output)
    except ValueError as exc:
        fail(f"-o: {exc}")
    try:
        plan = pipeline.read_pipeline(recipe)
    except RecipeError as exc:
        fail(str(exc))
    started = time.monotonic()
    with data_errors(), progress_bar("parsing images") as progress:
        kd = dataset.load(_data_path(data), parts=("training", "test", "lookup"),
                          progress=progress)
        kd.require_train()
        if kd.test is None or kd.lookup is None:  # known before hours of training, not after
            fail(f"{kd.path}: a pipeline's submission needs test.csv and IdLookupTable.csv")
    total = len(plan.members)
    out.print(f"pipeline [bold]{escape(str(recipe))}[/]: {total} member"
              f"{'s' if total > 1 else ''}" + (f", ensemble {escape(plan.ensemble['run_id'])}"
                                               if plan.ensemble else ""))

    def report(kind, run_id, state, run=None, index=None, total=None, minutes=None):
        name = f"[{index}/{total}] member {escape(run_id)}" if kind == "member" else \
            f"ensemble {escape(run_id)}"
        if state == "training":
            cap = f" (at most {minutes:.1f} min)" if minutes is not None else ""
            out.print(f"{name}: training{cap}", highlight=False, soft_wrap=True)
        elif state == "making":
            out.print(f"{name}: averaging the members", highlight=False, soft_wrap=True)
        else:
            tta = run.metrics.get("val_rmse_tta")
            took = "" if state == "exists" else \
                f" in {_age(run.config.get('wall_seconds') or 0)}"
            out.print(f"{name}: {'already there, kept' if state == 'exists' else 'done'}{took}"
                      f", val RMSE {run.val_rmse:.3f} px"
                      + (f" ({tta:.3f} with flip-TTA)" if tta is not None else ""),
                      highlight=False, soft_wrap=True)

    try:
        final = pipeline.run_pipeline(plan, kd, _models_dir(models), max_minutes=max_minutes,
                                      on_event=report, verbose=_verbose())
    except pipeline.PipelineStopped as exc:
        fail(str(exc), code=3)
    except KeyboardInterrupt:
        fail("pipeline interrupted; finished members are kept, rerun to continue", code=130)
    except (RecipeError, ValueError, FileExistsError, FloatingPointError) as exc:
        fail(str(exc))
    try:
        frame = submission(final, kd, tta=plan.tta, debias=plan.debias)
        write_submission(frame, output)
    except OSError as exc:
        fail(f"-o: could not write {output}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(str(exc))
    out.print(f"wrote {len(frame)} predictions from run {escape(final.id)} to "
              f"{escape(str(output))} ({(time.monotonic() - started) / 60:.1f} min)")


def _photo_predictor(run: str, models: Path | None):
    """The predictor ``fkd predict`` uses for RUN: a run (id or folder) with its model
    loaded once, or a ``.tflite`` file written by ``fkd export`` (a file: runs are
    folders)."""
    from fkd_core import photos

    if Path(run).is_file():
        from fkd_core.export import TFLiteModel

        try:
            return TFLiteModel(run)
        except ValueError as exc:
            fail(str(exc))
    found = _run(run, models)
    try:
        return photos.LoadedRun(found)
    except ValueError as exc:
        fail(str(exc))


def _parse_box(text: str | None) -> tuple[float, ...] | None:
    from fkd_core.photos import parse_box

    if text is None:
        return None
    try:
        return parse_box(text)
    except ValueError as exc:
        fail(f"--box: {exc}")


@app.command("predict")
def predict_cmd(
    run: str = typer.Argument(..., help="Run id (under --models), run folder, or a .tflite "
                              "file written by fkd export."),
    inputs: list[Path] = typer.Argument(..., help="Photos, or folders of photos."),
    output: Path = typer.Option(..., "-o", "--output", help="CSV file to write."),
    models: Path = MODELS_OPTION,
    overlay: Path = typer.Option(None, "--overlay", help="Folder (created if missing) for "
                                 "each photo with its keypoints drawn, as PNG."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Horizontal-flip test-time augment."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Second pass on a crop "
                                "aligned to the training faces' mean shape."),
    min_face: int = typer.Option(48, "--min-face", min=8, help="Smallest face (px) the "
                                 "detector looks for (large photos are shrunk to 800 px)."),
    box: str = typer.Option(None, "--box", help="x,y,w,h: the face's box instead of the "
                            "detector (every photo)."),
    whole: bool = typer.Option(False, "--whole", help="The whole photo (its central square) "
                               "is the face; no detector."),
    fallback: str = typer.Option("none", "--fallback", help="none, or whole: a photo where the "
                                 "detector finds no face is predicted on its whole frame "
                                 "(source 'whole' in the CSV)."),
    chunk: int = typer.Option(32, "--chunk", min=1, help="Photos per model batch."),
):
    """Keypoints on photos: find faces, frame them like the training faces, predict, write
    one CSV row per face in the photo's pixels."""
    import time

    from fkd_core import photos
    from fkd_core.files import atomic_write, check_output_file

    if fallback not in ("none", "whole"):
        fail(f"--fallback {fallback!r}: expected none or whole")
    face_box = _parse_box(box)
    try:
        check_output_file(output)
    except ValueError as exc:
        fail(f"-o: {exc}")
    if overlay is not None:
        try:
            overlay.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"--overlay: cannot make {overlay}: {exc.strerror or exc}")
    files = photos.image_files(inputs)
    if not files:
        fail("no photos found in " + ", ".join(str(p) for p in inputs))
    predictor = _photo_predictor(run, models)
    timings: dict = {}
    rows, errors, no_face, n_faces = [], [], 0, 0
    sources: dict[str, int] = {}
    start = time.perf_counter()
    with progress_bar("photos") as progress:
        for r in photos.predict_files(
                files, predictor, chunk=chunk, progress=progress, timings=timings,
                keep_images=overlay is not None, tta=tta, refine=refine, min_face=min_face,
                box=face_box, whole=whole, fallback=None if fallback == "none" else fallback):
            if r.error is not None:
                errors.append(r.error)
                err.print(f"[yellow]skipped[/] {escape(r.error)}", highlight=False)
                continue
            rows.append((r.name, r.faces))
            n_faces += len(r.faces)
            no_face += not r.faces
            for f in r.faces:
                sources[f.source] = sources.get(f.source, 0) + 1
            if overlay is not None:
                from PIL import Image

                drawn = photos.overlay(r.image, r.faces)
                target = overlay / f"{r.path.stem}.png"
                try:
                    with atomic_write(target, "wb") as f:
                        Image.fromarray(drawn).save(f, format="PNG")
                except OSError as exc:
                    errors.append(f"{r.name}: overlay not written ({exc.strerror or exc})")
    seconds = time.perf_counter() - start
    try:
        with atomic_write(output, newline="", encoding="utf-8") as f:
            photos.write_csv(f, rows)
    except OSError as exc:
        fail(f"-o: could not write {output}: {exc.strerror or exc}")
    n = len(files)
    by = ", ".join(f"{v} by {k}" for k, v in sorted(sources.items())) or "none"
    out.print(f"{n} photos: {n_faces} faces ({by}), {no_face} photos with no face, "
              f"{len(errors)} skipped; wrote {escape(str(output))}", highlight=False)
    used = len(files) - len(errors)
    out.print(f"{seconds:.1f} s, {n / max(seconds, 1e-9):.1f} photos/s (decoding "
              f"{timings.get('decode', 0) * 1000 / max(n, 1):.1f} ms, detecting "
              f"{timings.get('detect', 0) * 1000 / max(used, 1):.1f} ms, cropping and model "
              f"{timings.get('model', 0) * 1000 / max(used, 1):.1f} ms a photo)",
              highlight=False)
    if errors:
        raise typer.Exit(1 if used == 0 else 0)


@app.command("serve")
def serve_cmd(
    data: Path = DATA_OPTION,
    models: Path = MODELS_OPTION,
    port: int = typer.Option(5006, "--port"),
    address: str = typer.Option("127.0.0.1", "--address",
                                help="Interface to listen on (default: this machine only)."),
    show: bool = typer.Option(False, "--show", help="Open the page in a web browser."),
    corrections: Path = typer.Option(None, "--corrections", help="Label QA's corrections log "
                                     "(default: this data's log in the per-user fkd folder)."),
    photos: Path = typer.Option(None, "--photos", help="A folder of photos the Photos tab "
                                "offers by name (its image files, not sub-folders)."),
):
    """Serve the dashboard (the page `panel serve app/` serves) on this data and these runs."""
    # This process becomes the server (no child process), so a signal sent to it stops it.
    try:
        from app.serve import main as serve
    except ImportError as exc:
        fail(f"fkd's dashboard package `app` is not installed ({exc}); reinstall fkd")
    from fkd_core import settings

    data = settings.data_path(data)
    args = ["--models", str(_models_dir(models)), "--port", str(port), "--address", address]
    if data is not None:
        args += ["--data", str(data)]
    if show:
        args.append("--show")
    if corrections is not None:
        args += ["--corrections", str(corrections)]
    if photos is not None:
        args += ["--photos", str(photos)]
    raise typer.Exit(serve(args))


@app.command("archs")
def archs_cmd():
    """List the architectures `fkd train --arch` accepts."""
    from fkd_core.architectures import ARCHITECTURES

    for name, arch in ARCHITECTURES.items():
        out.print(f"[bold]{name:<10}[/] {arch.description}")


def _corrections_path(corrections: Path | None, train_set) -> Path:
    from fkd_core import corrections as log

    return corrections or log.default_path(train_set.fingerprint)


@labels_app.command("audit")
def labels_audit_cmd(
    data: Path = DATA_OPTION,
    output: Path = typer.Option(..., "-o", "--output", help="suspects.csv to write."),
    folds: int = typer.Option(None, "--folds", help="Train K models, each judging the faces "
                              "it did not see (out-of-fold)."),
    run: str = typer.Option(None, "--run", help="Judge with one existing run instead "
                            "(in-sample for the faces it trained on)."),
    models: Path = MODELS_OPTION,
    limit: int = typer.Option(None, "--limit", min=1, help="Keep the N most suspicious."),
    arch: str = typer.Option("resnet", "--arch", help="Fold models' architecture."),
    width: float = typer.Option(0.5, "--width", help="Fold models' channel multiplier."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Fold models' epochs."),
    steps_per_epoch: int = typer.Option(None, "--steps-per-epoch"),
    seed: int = typer.Option(0, "--seed"),
    corrections: Path = typer.Option(None, "--corrections",
                                     help="Audit the labels with this log applied."),
):
    """List suspicious labels, most suspicious first: residuals, swaps, shapes, duplicates."""
    from fkd_core import label_qa
    from fkd_core.files import atomic_write, check_output_file
    from fkd_core.training import TrainConfig

    if (folds is None) == (run is None):
        fail("give exactly one of --folds K or --run RUN")
    try:
        check_output_file(output)
    except ValueError as exc:
        fail(f"-o: {exc}")
    found = _run(run, models) if run else None
    train_set, _ = _corrected(_load_train(data), corrections)
    try:
        if found is not None:
            pred = found.predict(train_set.images, tta=True)
            how = f"run {found.id} (in-sample: it trained on most of these faces)"
        else:
            config = TrainConfig(arch=arch, width=width, epochs=epochs, seed=seed,
                                 steps_per_epoch=steps_per_epoch, augment={})
            with progress_bar(f"training {folds} fold models") as progress:
                pred = label_qa.out_of_fold_predictions(train_set, config, folds, seed=seed,
                                                        progress=progress)
            how = f"{folds} out-of-fold {arch} models"
    except KeyboardInterrupt:
        fail("audit interrupted; nothing was written", code=130)
    except (ValueError, FloatingPointError) as exc:
        fail(str(exc))
    suspects = label_qa.find_suspects(train_set.images, train_set.keypoints, train_set.row_ids,
                                      pred, limit=limit)
    with atomic_write(output, encoding="utf-8", newline="") as f:
        suspects.to_csv(f, index=False, float_format="%.3f")
    counts = suspects.reason.str.split(":").str[0].value_counts()
    out.print(f"{len(suspects)} suspects judged by {escape(how)}: "
              + ", ".join(f"{n} {k}" for k, n in counts.items()) + f"; wrote {escape(str(output))}")


@labels_app.command("apply")
def labels_apply_cmd(
    data: Path = DATA_OPTION,
    corrections: Path = typer.Option(None, "--corrections", help="The log (default: this "
                                     "data's log in the per-user fkd folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the corrected "
                                "training.csv (never the data's own folder)."),
):
    """Write a corrected Kaggle-format training.csv; the original file is never touched."""
    from fkd_core import kaggle

    train_set = _load_train(data)
    path = _corrections_path(corrections, train_set)
    fixed, applied = _corrected(train_set, path)
    target = output / kaggle.TRAINING
    source = Path(train_set.source.split("!")[0])
    if target.exists() and source.exists() and target.samefile(source):
        fail(f"-o: {output} holds the original training.csv; choose another folder")
    output.mkdir(parents=True, exist_ok=True)
    kaggle.write_training_csv(target, fixed.images, fixed.keypoints)
    out.print(f"applied {applied['count']} corrections from {escape(str(path))}; "
              f"wrote {escape(str(target))}")


@labels_app.command("log")
def labels_log_cmd(
    data: Path = DATA_OPTION,
    corrections: Path = typer.Option(None, "--corrections"),
):
    """List the corrections kept for this data, oldest first."""
    from fkd_core import corrections as log

    train_set = _load_train(data)
    path = _corrections_path(corrections, train_set)
    try:
        entries = log.read(path)
    except log.CorrectionsError as exc:
        fail(str(exc))
    out.print(f"{len(entries)} corrections in {escape(str(path))}")
    table = Table("time", "row", "keypoint", "old", "new", "reason", "note", box=None)
    for c in entries:
        table.add_row(c.time, str(c.row), c.keypoint, log.format_point(c.old),
                      log.format_point(c.new), escape(c.reason), escape(c.note))
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="fkd")


if __name__ == "__main__":
    main()
