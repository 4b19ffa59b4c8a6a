"""How fkd grows with the data set: load, training, prediction caching and the dashboard at
1×, 4× and 16× Kaggle's size (7049 training + 1783 test faces per 1×), in one run.

Usage: python benchmarks/bench_scaling.py [--scales 1 4 16] [--steps 30] [--max-minutes 25]
                                          [--work benchmarks/out/scaling] [--out FILE.json]
       python benchmarks/bench_scaling.py --prepare-only --scales 1 4 16
       python benchmarks/bench_scaling.py --report FILE.json

Data: a k× set is k Kaggle-size demo sets (``fkd data demo --seed 0..k-1``: different faces)
merged into one Kaggle layout (test ImageIds and lookup RowIds renumbered); 1× is seed 0
alone, exactly ``fkd data demo --train 7049 --test 1783``. Made once under --work and reused
(not part of the timed stages).

Each stage runs in a fresh child process, so its peak RSS (``ru_maxrss``) is its own:

  load, cold   dataset.load(PATH) with an empty parse cache: strict parse + validation of
               training.csv and test.csv, content digests, entries stored in the cache
  load, warm   the same call again (a new process): arrays read from the parse cache
  feed         training's tf.data input (fkd_core.training.make_dataset over the training
               split, default augmentation, shuffled) without a model: time to the first
               batch (the shuffle buffer holds the whole split) and batches/s after it
  train        fkd_core.training.train, the default architecture (resnet, heatmap head,
               width 1, batch 64, default augmentation), one epoch of --steps steps: setup
               (call → first batch), images/s over the steps after the first --warmup, the
               validation pass (faces/s), and everything after fit (scoring, saving)
  predict      fkd_core.runs.cached_predictions over every training and test face: hashing
               the pixels (images_key), computing and writing predictions-<key>.npz (after one
               untimed call on 256 faces that traces the graph), reading it back; with a
               cheap ``simple`` run (--predict-arch resnet: the train stage's default one)
  dashboard    a real ``fkd serve`` (app.serve.Server) on the set, parse cache and predictions
               warm: start → first page served; headless Chromium: open the page (tab bar
               shown), Faces tab → first page of faces, "next" → the next page (median of
               --next-repeat); the server's RSS and peak RSS (VmHWM) afterwards

Ratios are to 1× measured in the same run (so machine load drifts hit them less). A stage
whose memory, extrapolated from the previous scale, would not fit in the machine's available
memory (or that would start after --max-minutes) is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app/ is not an installed package

N_TRAIN, N_TEST = 7049, 1783  # Kaggle's sizes: one 1× block
STAGES = ("load-cold", "load-warm", "feed", "train", "predict", "dashboard")
MIB = 2**20


# --------------------------------------------------------------------------------------
# Data: k demo blocks merged into one Kaggle layout


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def _data_dir(work: Path, size: tuple[int, int]) -> Path:
    return work / ("data" if size == (N_TRAIN, N_TEST) else f"data-{size[0]}-{size[1]}")


def block(work: Path, seed: int, size: tuple[int, int] = (N_TRAIN, N_TEST)
          ) -> tuple[Path, dict | None]:
    """The seed's demo set of ``size`` (training, test) faces, made by ``fkd data demo`` once;
    with how long it took and its peak memory when it was made now."""
    folder = _data_dir(work, size) / "blocks" / f"seed-{seed}"
    if (folder / "SampleSubmission.csv").is_file():
        return folder, None
    tmp = folder.with_name(f".{folder.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    done = _run([sys.executable, "-c", _DEMO_CHILD, str(tmp), str(seed), *map(str, size)])
    seconds = time.perf_counter() - t
    os.replace(tmp, folder)
    return folder, {"seconds": seconds, "peak_mb": float(done.stdout.split()[-1])}


# `fkd data demo OUT --train 7049 --test 1783 --seed S`, reporting the process's peak RSS.
_DEMO_CHILD = """
import resource, sys
from fkd_core.cli import app
try:
    app(["data", "demo", sys.argv[1], "--seed", sys.argv[2], "--train", sys.argv[3],
         "--test", sys.argv[4]])
except SystemExit as e:
    if e.code:
        raise
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def dataset_at(work: Path, k: int, size: tuple[int, int] = (N_TRAIN, N_TEST)) -> Path:
    """The k× set: block 0 itself for k = 1, else blocks 0..k-1 merged (made once)."""
    if k == 1:
        return block(work, 0, size)[0]
    out = _data_dir(work, size) / f"x{k}"
    if (out / "SampleSubmission.csv").is_file():
        return out
    blocks = [block(work, s, size)[0] for s in range(k)]
    merge(blocks, out, size[1])
    return out


def merge(blocks: list[Path], out: Path, n_test: int) -> None:
    """One Kaggle layout of several demo blocks, written beside ``out`` and renamed into place:
    training rows concatenated, test ImageIds shifted by n_test per block, the lookup table's
    ImageIds likewise and its RowIds renumbered, a zero SampleSubmission for those RowIds."""
    import numpy as np
    import pandas as pd

    from fkd_core import kaggle

    tmp = out.with_name(f".{out.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _concat(blocks, kaggle.TRAINING, tmp)

    def shift_image_id(i: int, line: bytes) -> bytes:
        image_id, rest = line.split(b",", 1)
        return b"%d,%s" % (int(image_id) + i * n_test, rest)

    _concat(blocks, kaggle.TEST, tmp, shift_image_id)
    lookups = []
    for i, b in enumerate(blocks):
        part = pd.read_csv(b / kaggle.LOOKUP)
        part["ImageId"] += i * n_test
        lookups.append(part)
    lookup = pd.concat(lookups, ignore_index=True)
    lookup["RowId"] = np.arange(1, len(lookup) + 1)
    kaggle.write_lookup_csv(tmp / kaggle.LOOKUP, lookup)
    kaggle.write_submission_csv(tmp / kaggle.SAMPLE, lookup["RowId"].to_numpy(),
                                np.zeros(len(lookup)))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _concat(blocks: list[Path], name: str, folder: Path, edit=None) -> None:
    """``folder/name`` as the blocks' files of that name, one header; ``edit(i, line)``
    rewrites block i's data lines (None: copied as they are)."""
    with open(folder / name, "wb") as dst:
        for i, b in enumerate(blocks):
            with open(b / name, "rb") as src:
                header = src.readline()
                if i == 0:
                    dst.write(header)
                if edit is None:
                    shutil.copyfileobj(src, dst, 16 * MIB)
                else:
                    dst.writelines(edit(i, line) for line in src)

# --------------------------------------------------------------------------------------
# Stages, each run in a child process of its own


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(data: str):
    from fkd_core import dataset

    return dataset.load(data, parts=("training", "test"))


def stage_load(args: dict) -> dict:
    """dataset.load with whatever the parse cache holds (the parent chooses an empty or a
    filled one): seconds, and the memory of a process holding the arrays."""
    from fkd_core import dataset

    base = _rss_mb()
    t = time.perf_counter()
    data = dataset.load(args["data"])
    seconds = time.perf_counter() - t
    held = data.train.images.nbytes + data.test.images.nbytes
    return {"seconds": seconds, "rss_mb": _rss_mb(), "base_mb": base, "peak_mb": _peak_mb(),
            "images_mb": held / MIB, "n_train": len(data.train), "n_test": len(data.test)}


def _train_config(args: dict):
    from fkd_core.augment import AugmentConfig
    from fkd_core.training import TrainConfig

    # fkd train's defaults (its --augment default is the full default augmentation)
    return TrainConfig(epochs=1, steps_per_epoch=args["steps"],
                       augment=AugmentConfig().to_dict())


def stage_feed(args: dict) -> dict:
    """The training input pipeline alone, fed exactly as train() feeds it."""
    import tensorflow as tf  # noqa: F401  (imported before the baseline is read)

    from fkd_core.calibration import estimate_label_offset
    from fkd_core.training import make_dataset, split_rows, training_targets

    data = _load(args["data"]).train
    base = _rss_mb()
    config = _train_config(args)
    config.label_offset = estimate_label_offset(data.images, data.keypoints)
    t = time.perf_counter()
    split = split_rows(data, config)
    usable, targets = training_targets(data, config)
    rows = split["train"]
    ds = make_dataset(data.images[rows], targets[rows], config.batch_size,
                      augment=config.augment, shuffle=True, seed=config.seed)
    batches = iter(ds)
    next(batches)
    first = time.perf_counter() - t
    n = args["feed_batches"]
    t = time.perf_counter()
    for _ in range(n):
        next(batches)
    rate = n * config.batch_size / (time.perf_counter() - t)
    return {"first_batch_s": first, "images_per_s": rate, "base_mb": base, "rss_mb": _rss_mb(),
            "peak_mb": _peak_mb(), "rows": len(rows)}


def stage_train(args: dict) -> dict:
    """fkd_core.training.train for one short epoch, timed from its own callbacks."""
    import keras

    from fkd_core.training import train

    data = _load(args["data"]).train
    base = _rss_mb()
    marks: dict[str, list[float]] = {"batch": [], "test": []}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks["batch"].append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            marks["batch_end"] = [time.perf_counter()]

        def on_test_begin(self, logs=None):
            marks["test"].append(time.perf_counter())

        def on_test_end(self, logs=None):
            marks["test"].append(time.perf_counter())

    config = _train_config(args)
    t = time.perf_counter()
    folder = train(data, config, args["models"], run_id=args["run_id"], verbose=0,
                   extra_callbacks=[Clock()])
    total = time.perf_counter() - t
    b, w = marks["batch"], args["warmup"]
    steady = (len(b) - w) * config.batch_size / (marks["batch_end"][0] - b[w])
    val_n = round(len(data) * config.val_fraction)
    val_s = marks["test"][1] - marks["test"][0]
    return {"seconds": total, "setup_s": b[0] - t, "images_per_s": steady,
            "val_s": val_s, "val_faces_per_s": val_n / val_s,
            "after_fit_s": t + total - marks["test"][1], "base_mb": base,
            "peak_mb": _peak_mb(), "run": str(folder)}


def stage_predict(args: dict) -> dict:
    """cached_predictions over the whole set: hash, compute + write, read back."""
    from fkd_core import runs

    data = _load(args["data"])
    parts = {"train": data.train.images, "test": data.test.images}
    run = runs.read_run(args["run"])
    for old in run.path.glob("predictions-*.npz"):
        old.unlink()
    model = run.load_model()
    run.predict(data.train.images[:256], model=model)  # the first call traces the graph
    base = _rss_mb()  # TensorFlow, the model and the data: what grows from here is predicting
    t = time.perf_counter()
    key = runs.images_key(parts)
    hash_s = time.perf_counter() - t
    t = time.perf_counter()
    runs.cached_predictions(run, parts, model=model, key=key)
    compute_s = time.perf_counter() - t
    peak = _peak_mb()
    t = time.perf_counter()
    again = runs.cached_predictions(run, parts, key=key)
    read_s = time.perf_counter() - t
    n = sum(len(a) for a in again.values())
    size = (run.path / f"predictions-{key}.npz").stat().st_size
    return {"hash_s": hash_s, "compute_s": compute_s, "faces_per_s": n / compute_s,
            "read_s": read_s, "npz_mb": size / MIB, "base_mb": base, "peak_mb": peak,
            "faces": n}


def _proc_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage_dashboard(args: dict) -> dict:
    """A real server on the set; a headless Chromium opens it and pages through the faces."""
    from playwright.sync_api import sync_playwright

    from app import screenshots as ui
    from app.serve import Server

    out: dict = {}
    srv = Server(args["data"], args["models"], timeout=900, log=args["log"])
    with sync_playwright() as p:
        browser = ui.launch(p)
        with srv as url:
            out["start_s"] = srv.started_in
            t = time.perf_counter()
            page, errors = ui.open_page(browser, url)
            out["open_s"] = time.perf_counter() - t
            t = time.perf_counter()
            ui.goto_tab(page, "Faces")
            ui.wait_for_faces(page, timeout=900_000)
            out["faces_s"] = time.perf_counter() - t
            times = []
            for _ in range(args["next_repeat"]):
                before = ui.captions(page)[0]
                t = time.perf_counter()
                page.locator(".fkd-next button").click()
                page.wait_for_function("(old) => !document.body.innerText.includes(old)",
                                       arg=before, polling=10, timeout=300_000)
                times.append(time.perf_counter() - t)
            out["next_s"] = statistics.median(times)
            out["server_rss_mb"] = _proc_mb(srv.proc.pid, "VmRSS")
            out["server_peak_mb"] = _proc_mb(srv.proc.pid, "VmHWM")
            out["console_errors"] = len(errors)
            browser.close()
    return out


CHILDREN = {"load-cold": stage_load, "load-warm": stage_load, "feed": stage_feed,
            "train": stage_train, "predict": stage_predict, "dashboard": stage_dashboard}


# --------------------------------------------------------------------------------------
# The parent: data, the stages per scale, guards, the table


def child(stage: str, args: dict, env: dict) -> dict:
    """Run one stage in a fresh process; its JSON answer, or the error it died with."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", stage, json.dumps(args)],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "wall_s": wall}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def projected_mb(previous: dict | None, k0: int, k: int) -> float | None:
    """A stage's peak memory at k× from its measurement at k0×: the part above the process's
    baseline grows in proportion to the data."""
    if not previous or "error" in previous or "skipped" in previous:
        return None
    peak = previous.get("peak_mb", previous.get("server_peak_mb"))
    base = previous.get("base_mb", 0.0)
    return None if peak is None else base + (peak - base) * k / k0


def run_scales(args) -> dict:
    work, size = args.work, tuple(args.block)
    started = time.monotonic()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
                         f" GiB RAM, Python {platform.python_version()}",
              "commit": _git_head(), "steps": args.steps, "predict_arch": args.predict_arch,
              "load_start": os.getloadavg(), "scales": {}}
    previous: tuple[int, dict] | None = None
    for k in args.scales:
        data = dataset_at(work, k, size)
        here = work / "run" / f"x{k}"
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        env = {"FKD_CACHE_DIR": str(here / "cache")}
        csv_mb = sum(f.stat().st_size for f in data.glob("*.csv")) / MIB
        scale: dict = {"data": str(data), "csv_mb": csv_mb,
                       "faces": k * sum(size)}
        result["scales"][str(k)] = scale
        common = {"data": str(data), "steps": args.steps, "warmup": args.warmup,
                  "feed_batches": args.feed_batches, "next_repeat": args.next_repeat}
        train_models, serve_models = here / "models-train", here / "models"
        for stage in STAGES:
            minutes = (time.monotonic() - started) / 60
            reason = None
            if minutes > args.max_minutes:
                reason = f"{minutes:.0f} min spent, over --max-minutes {args.max_minutes:g}"
            elif stage == "dashboard" and "faces_per_s" not in scale.get("predict", {}):
                reason = "no cached predictions (the predict stage did not finish), so the " \
                         "server would compute them itself"
            elif previous is not None:
                need = projected_mb(previous[1].get(stage), previous[0], k)
                if need is not None and need > 0.85 * available_mb():
                    reason = (f"needs ≈ {need / 1024:.1f} GiB (from {previous[0]}×), "
                              f"{available_mb() / 1024:.1f} GiB available")
            if reason:
                scale[stage] = {"skipped": reason}
                print(f"{k}× {stage}: skipped ({reason})", flush=True)
                continue
            extra: dict = {}
            if stage == "train":
                extra = {"models": str(train_models), "run_id": f"scale-x{k}"}
            elif stage == "predict":
                extra = {"run": _predict_run(args, scale, data, train_models, serve_models, env)}
            elif stage == "dashboard":
                extra = {"models": str(serve_models), "log": str(here / "server.log")}
            scale[stage] = child(stage, {**common, **extra}, env)
            print(f"{k}× {stage}: {json.dumps(scale[stage])}", flush=True)
        scale["load_after"] = os.getloadavg()
        shutil.rmtree(here / "cache", ignore_errors=True)
        previous = (k, scale)
    result["load_end"] = os.getloadavg()
    result["minutes"] = (time.monotonic() - started) / 60
    return result


def _predict_run(args, scale: dict, data: Path, train_models: Path, serve_models: Path,
                 env: dict) -> str:
    """The run whose predictions are cached and served: the train stage's default-arch run,
    or (the default) a cheap `simple` run made here by ``fkd train`` on the same data."""
    serve_models.mkdir(exist_ok=True)
    if args.predict_arch == "resnet" and "run" in scale.get("train", {}):
        run = Path(scale["train"]["run"])
        target = serve_models / run.name
        shutil.copytree(run, target)
        return str(target)
    run_id = "scale-simple"
    _run([sys.executable, "-m", "fkd_core.cli", "train", "--data", str(data), "--arch",
          "simple", "--head", "regression", "--epochs", "1", "--steps-per-epoch", "2",
          "--models", str(serve_models), "--run-id", run_id], env)
    return str(serve_models / run_id)


def _git_head() -> str:
    try:
        return _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# What the table shows: (stage, key, label, unit, digits).
ROWS = [
    (None, "faces", "faces (training + test)", "", 0),
    (None, "csv_mb", "Kaggle CSV files", "MiB", 0),
    ("load-cold", "seconds", "load, cold (parse + validate + cache)", "s", 2),
    ("load-cold", "peak_mb", "load, cold: peak RSS", "MiB", 0),
    ("load-warm", "seconds", "load, warm (parse cache)", "s", 2),
    ("load-warm", "rss_mb", "load, warm: RSS holding the arrays", "MiB", 0),
    ("load-warm", "images_mb", "  of which pixel arrays (uint8)", "MiB", 0),
    ("feed", "first_batch_s", "training feed: first batch (split, copy, shuffle buffer)", "s", 2),
    ("feed", "images_per_s", "training feed alone (augmented)", "img/s", 0),
    ("feed", "peak_mb", "training feed: peak RSS", "MiB", 0),
    ("train", "setup_s", "train(): call → first batch", "s", 1),
    ("train", "images_per_s", "train(): images/s (default arch)", "img/s", 1),
    ("train", "val_s", "train(): validation pass", "s", 1),
    ("train", "after_fit_s", "train(): after fit (score, save)", "s", 1),
    ("train", "seconds", "train(): total", "s", 1),
    ("train", "peak_mb", "train(): peak RSS", "MiB", 0),
    ("predict", "hash_s", "predictions: hash the pixels (images_key)", "s", 2),
    ("predict", "compute_s", "predictions: compute + write cache", "s", 1),
    ("predict", "faces_per_s", "predictions: faces/s", "img/s", 0),
    ("predict", "read_s", "predictions: read the cache back", "s", 3),
    ("predict", "npz_mb", "predictions cache file", "MiB", 1),
    ("predict", "peak_mb", "predictions: peak RSS", "MiB", 0),
    ("dashboard", "start_s", "dashboard: start → first page served", "s", 1),
    ("dashboard", "open_s", "dashboard: open page (tab bar shown)", "s", 2),
    ("dashboard", "faces_s", "dashboard: Faces tab → first page", "s", 2),
    ("dashboard", "next_s", "dashboard: next page (median)", "s", 3),
    ("dashboard", "server_rss_mb", "dashboard: server RSS", "MiB", 0),
    ("dashboard", "server_peak_mb", "dashboard: server peak RSS", "MiB", 0),
]


def _value(scale: dict, stage: str | None, key: str):
    part = scale if stage is None else scale.get(stage, {})
    if "error" in part:
        return "failed"
    if "skipped" in part:
        return "skipped"
    return part.get(key)


def table(result: dict) -> str:
    """Markdown: one column per scale, each value with its ratio to 1×."""
    scales = list(result["scales"])
    head = "| measure | " + " | ".join(f"{s}×" for s in scales) + " |"
    lines = [head, "|" + " --- |" * (len(scales) + 1)]
    for stage, key, label, unit, digits in ROWS:
        values = [_value(result["scales"][s], stage, key) for s in scales]
        if all(v is None for v in values):
            continue
        first = values[0]
        cells = []
        for s, v in zip(scales, values):
            if not isinstance(v, (int, float)):
                cells.append(v or "")
                continue
            text = f"{v:,.{digits}f} {unit}".strip()
            if s != scales[0] and isinstance(first, (int, float)) and first:
                text += f" ({v / first:.2g}×)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = []
    for s in scales:
        for stage in STAGES:
            part = result["scales"][s].get(stage, {})
            for what in ("skipped", "error"):
                if what in part:
                    notes.append(f"- {s}× {stage} {what}: {part[what]}")
    load = ", ".join(f"{v:.2f}" for v in result["load_start"])
    end = ", ".join(f"{v:.2f}" for v in result.get("load_end", ()))
    foot = [f"\n{result['date']}, commit {result['commit']}, {result['machine']}; "
            f"{result['steps']} training steps; predictions by a `{result['predict_arch']}` "
            f"run; load average at start {load}, at end {end}; "
            f"{result.get('minutes', 0):.1f} min in all."]
    return "\n".join(lines + foot + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--block", type=int, nargs=2, default=[N_TRAIN, N_TEST],
                    metavar=("TRAIN", "TEST"), help="faces of 1× (default Kaggle's)")
    ap.add_argument("--steps", type=int, default=30, help="training steps (batch 64)")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of images/s")
    ap.add_argument("--feed-batches", type=int, default=50)
    ap.add_argument("--next-repeat", type=int, default=5)
    ap.add_argument("--predict-arch", choices=("simple", "resnet"), default="simple")
    ap.add_argument("--max-minutes", type=float, default=25.0,
                    help="start no stage after this long (data preparation included)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "scaling")
    ap.add_argument("--out", type=Path, help="results JSON (default: WORK/results-DATE.json)")
    ap.add_argument("--prepare-only", action="store_true", help="make the data sets and stop")
    ap.add_argument("--report", type=Path, help="print the table of a results JSON")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "ARGS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        stage, options = args.child
        print(json.dumps(CHILDREN[stage](json.loads(options))))
        return
    if args.report:
        print(table(json.loads(args.report.read_text())))
        return
    if args.scales[0] != 1:
        ap.error("the first scale must be 1 (ratios are to 1×)")
    if args.prepare_only:
        for k in args.scales:
            print(f"{k}×: {dataset_at(args.work, k, tuple(args.block))}", flush=True)
        return
    result = run_scales(args)
    out = args.out or args.work / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(result, f, indent=2)
    os.replace(f.name, out)
    print(f"\nresults: {out}\n")
    print(table(result))


if __name__ == "__main__":
    main()
