"""Inspection views' latency, server-side: augmentation QA and activation maps.

Usage: python benchmarks/bench_inspect.py [--train 2000] [--repeat 10]
                                          [--work benchmarks/out/inspect]

  augment, library            fkd_core.augment.augment_samples: 8 samples of one face
  augment, view               AugmentView redraw for a new seed (8 samples, the flip check,
                              every source's data) plus serialising the Bokeh PATCH-DOC
                              messages exactly as the server does before sending them
  augment, one setting        the same after changing rotate_deg (same seed)
  activations, library        fkd_core.activations.feature_maps for one layer (cached sub-model)
  activations, view           ActivationsView showing a layer's maps for another face (maps,
                              tiles, bar chart, serialisation), per layer; the slowest layer's
                              median is reported
  activations, first use      the same the first time each layer is shown (builds its sub-model)

The model is the default architecture (resnet, heatmap head, width 1.0) trained for one step
by `fkd train` (its weights do not change the cost). Every measure is warmed up once, then
the median (and max) of --repeat runs is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app/ is not an installed package

TARGETS = {"augment, view": 300.0, "augment, one setting": 300.0, "augment, library": 300.0,
           "activations, view": 500.0, "activations, library": 500.0}
RUN = "bench-resnet-heatmap"


def prepare(work: Path, n_train: int) -> tuple[Path, Path]:
    from fkd_core import synthetic

    data, models = work / f"data-{n_train}", work / "models"
    if not (data / "training.csv").is_file():
        print(f"writing {n_train} demo faces to {data} …", flush=True)
        synthetic.write_demo(data, n_train=n_train, n_test=20)
    if not (models / RUN).is_dir():
        print(f"training {RUN} (default architecture, one step) …", flush=True)
        subprocess.run(
            [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(data), "--arch",
             "resnet", "--head", "heatmap", "--width", "1.0", "--epochs", "1",
             "--steps-per-epoch", "1", "--batch-size", "8", "--models", str(models),
             "--run-id", RUN],
            check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    return data, models


def repeat_ms(fn, repeat: int) -> tuple[float, float]:
    """(median, max) ms of fn(i) for i in 1..repeat, after one warm-up call fn(0)."""
    fn(0)
    times = []
    for i in range(1, repeat + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), max(times)


def measure(data: Path, models: Path, repeat: int) -> dict:
    import numpy as np
    import panel as pn
    from bench_dashboard import PatchTimer
    from bokeh.document import Document

    from app.activations_view import ActivationsView
    from app.augment_view import AugmentView
    from app.state import Settings, Store
    from fkd_core import activations
    from fkd_core.augment import AugmentConfig, augment_samples

    store = Store(Settings(str(data), str(models)))
    out = {}
    face = store.train.images[0]
    labels = np.nan_to_num(store.train.keypoints[0], nan=48.0)
    out["augment, library: 8 samples"] = repeat_ms(
        lambda i: augment_samples(face, labels, 8, AugmentConfig(), seed=i), repeat)

    doc = Document()
    augment = AugmentView(store)
    doc.add_root(pn.panel(augment).get_root(doc))
    augment.activate()
    patches = PatchTimer(doc)
    patches.flush()

    def new_seed(i):
        augment.seed = 1000 + i
        patches.flush()

    def one_setting(i):
        augment.settings.rotate_deg = 10.0 + i
        patches.flush()

    out["augment, view: 8 samples, new seed"] = repeat_ms(new_seed, repeat)
    out["augment, one setting changed (same seed)"] = repeat_ms(one_setting, repeat)

    t0 = time.perf_counter()
    model = store.model(RUN)
    out["model load (once per run and server)"] = (1000 * (time.perf_counter() - t0), None)
    view = ActivationsView(store)
    doc.add_root(pn.panel(view).get_root(doc))
    patches = PatchTimer(doc)
    view.activate()
    patches.flush()
    layers = list(view.param.layer.names.values())
    first, warm, library = {}, {}, {}
    for name in layers:
        t0 = time.perf_counter()
        view.layer = name
        patches.flush()
        first[name] = 1000 * (time.perf_counter() - t0)

    for name in layers:
        def show_face(i, name=name):
            view.row = int(store.train.row_ids[i % len(store.train)])
            patches.flush()

        view.layer = name
        patches.flush()
        warm[name] = repeat_ms(show_face, repeat)
        library[name] = repeat_ms(lambda i, name=name: activations.feature_maps(
            model, name, store.train.images[i % len(store.train)]), repeat)
    slowest = max(layers, key=lambda n: warm[n][0])
    out[f"activations, view: one layer ({len(layers)} layers; slowest: {slowest})"] = \
        warm[slowest]
    out[f"activations, view: median layer ({len(layers)} layers)"] = (
        statistics.median(v[0] for v in warm.values()), None)
    out[f"activations, library: feature_maps ({slowest})"] = library[slowest]
    worst_first = max(first, key=first.get)
    out[f"activations, first use of a layer (slowest: {worst_first})"] = (
        statistics.median(first.values()), first[worst_first])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "inspect")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("FKD_CACHE_DIR", str(args.work / "cache"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    data, models = prepare(args.work, args.train)
    results = measure(data, models, args.repeat)
    print(f"\n{args.train} demo faces, run {RUN} (resnet, heatmap head, width 1.0), "
          f"{os.cpu_count()} CPUs, median of {args.repeat} after a warm-up\n")
    print(f"{'measure':<66} {'median':>8} {'max':>8} {'target':>8}  ok")
    for name, (median, worst) in results.items():
        target = next((v for k, v in TARGETS.items() if name.startswith(k)), None)
        value = worst if worst is not None else median
        ok = "" if target is None else ("yes" if value <= target else "NO")
        print(f"{name:<66} {median:>6.0f}ms {'' if worst is None else f'{worst:.0f}ms':>8} "
              f"{'' if target is None else f'{target:.0f}ms':>8}  {ok}")


if __name__ == "__main__":
    main()
