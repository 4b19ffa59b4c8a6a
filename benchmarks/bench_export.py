"""Deployment cost of runs: Keras vs TFLite vs dynamic-range quantised TFLite.

Usage: python benchmarks/bench_export.py RUN [RUN ...] [--models models] [--data DIR]
                                         [--repeat 300] [--warmup 20] [--threads N]
                                         [--work benchmarks/out/export] [--json FILE]

For each run (id under --models, or a run folder) the run is exported with
fkd_core.export.export_run (as `fkd export` does) to --work, then:

  size          bytes on disk: the run's model.keras, the .tflite files
  one face      latency of predicting one 96x96 face (uint8 in, 30 pixel coordinates out),
                median and 90th percentile of --repeat calls after --warmup calls:
                  keras predict  Run.predict (what fkd evaluate and fkd predict use:
                                 Keras's model.predict)
                  keras call     the Keras model called directly (model(x)), the lightest
                                 Keras path, plus the same scaling
                  tflite         TFLiteModel.predict with --threads interpreter threads
  val RMSE      the run's validation rows scored by fkd_core.evaluation.evaluate, exactly as
                `fkd evaluate RUN --data DIR` does, with the Keras model and each TFLite file;
                the change quantisation causes is printed beside it

--data must be the data the run was trained on (faces15 runs: ../shared/data/faces15).
Faces are the first validation faces, cycled, so every call sees a real face.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def latency_ms(fn, faces, repeat: int, warmup: int) -> tuple[float, float]:
    """(median, 90th percentile) ms of fn(one face), after ``warmup`` calls."""
    for i in range(warmup):
        fn(faces[i % len(faces)][None])
    times = []
    for i in range(repeat):
        face = faces[i % len(faces)][None]
        t0 = time.perf_counter()
        fn(face)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def bench_run(name: str, models: Path, train_set, work: Path, args) -> list[dict]:
    import numpy as np

    from fkd_core import export, runs
    from fkd_core.evaluation import evaluate, evaluation_rows
    from fkd_core.predict import predict_keypoints

    run = runs.resolve(name, models)
    model = run.load_model()
    rows = evaluation_rows(run, train_set, "val")
    faces = train_set.images[rows[:64]]
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for quantize in (None, "dynamic"):
        path = work / f"{run.id}-{quantize or 'plain'}.tflite"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        export.export_run(run, path, "tflite", quantize=quantize, model=model)
        print(f"  exported {path} in {time.perf_counter() - t0:.0f} s", flush=True)
        files[quantize] = path

    class Called:  # Keras's model(x) behind predict_keypoints' model.predict interface
        @staticmethod
        def predict(x, batch_size=None, verbose=0):
            return np.asarray(model(x, training=False))

    keras_eval = evaluate(run, train_set, subset="val", model=model)
    results = []
    common = dict(run=run.id, arch=run.arch, kind=run.kind, val_faces=len(rows))
    size = (run.path / "model.keras").stat().st_size
    for label, fn in (
        ("keras predict", lambda f: run.predict(f, model=model)),
        ("keras call", lambda f: predict_keypoints(Called, f, label_offset=run.label_offset)),
    ):
        median, p90 = latency_ms(fn, faces, args.repeat, args.warmup)
        results.append(dict(common, format=label, bytes=size, median_ms=median, p90_ms=p90,
                            val_rmse=keras_eval.rmse, rmse_change=0.0))
        print(f"  {label}: {median:.2f} ms", flush=True)
    for quantize, path in files.items():
        lite = export.TFLiteModel(path, num_threads=args.threads)
        median, p90 = latency_ms(lite.predict, faces, args.repeat, args.warmup)
        ev = evaluate(run, train_set, subset="val", model=lite.model)
        label = "tflite dynamic" if quantize else "tflite"
        results.append(dict(common, format=label, bytes=lite.size_bytes, median_ms=median,
                            p90_ms=p90, val_rmse=ev.rmse, rmse_change=ev.rmse - keras_eval.rmse,
                            max_abs_diff_px=float(np.abs(ev.pred - keras_eval.pred).max())))
        print(f"  {label}: {median:.2f} ms", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Run ids (under --models) or run folders.")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--data", type=Path, default=None,
                        help="The data the runs were trained on (default: $FKD_DATA, else "
                             "the demo set).")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="TFLite interpreter threads (default: every core, as Keras).")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "export")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from fkd_core import dataset, settings

    data = settings.data_path(args.data) or dataset.demo_path()
    train_set = dataset.load(data, parts=("training",)).require_train()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, TFLite threads "
          f"{args.threads}, data {data}", flush=True)
    results = []
    for name in args.runs:
        print(f"{name}:", flush=True)
        results += bench_run(name, args.models, train_set, args.work, args)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| run | arch | format | size MB | one face ms (median / p90) | val RMSE px | "
          "change px |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | {r['arch']} | {r['format']} | {r['bytes'] / 1e6:.2f} | "
              f"{r['median_ms']:.2f} / {r['p90_ms']:.2f} | {r['val_rmse']:.4f} | "
              f"{r['rmse_change']:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M UTC",
                                                               time.gmtime()),
                                         "load_average": load, "threads": args.threads,
                                         "data": str(data), "results": results}, indent=1))


if __name__ == "__main__":
    main()
