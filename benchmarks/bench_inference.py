"""Inference rate of finished runs on a data set's test faces, measured in one run.

Usage: python benchmarks/bench_inference.py RUN [RUN ...] [--data PATH] [--models DIR]
       [--repeat 3]

For each run: its model loaded once, then ``Run.predict`` (what ``fkd submit`` and
``fkd evaluate`` call) over every test face, plain and with flip-TTA, best of ``--repeat``
after one untimed call that traces the graph. Rates are given as ratios to the first run
measured in the same process, so an ensemble's cost reads directly against one member's.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--models", default=os.environ.get("FKD_MODELS", "models"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from fkd_core import dataset, runs

    data = dataset.load(args.data or dataset.demo_path())
    if data.test is None:
        raise SystemExit(f"{data.path}: no test faces to predict")
    images = data.test.images
    print(f"{len(images)} test faces of {data.path}; {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for run_id in args.runs:
        run = runs.resolve(run_id, args.models)
        model = run.load_model()
        for tta in (False, True):
            run.predict(images[:64], tta=tta, model=model)  # traces the graph: not timed
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                run.predict(images, tta=tta, model=model)
                best = min(best, time.perf_counter() - start)
            rows.append((run.id, run.arch, tta, len(images) / best))
    base = {tta: rate for _, _, tta, rate in rows[:2]}
    print("\n| run | arch | flip-TTA | faces/s | ratio to the first run |")
    print("| --- | --- | --- | ---: | ---: |")
    for run_id, arch, tta, rate in rows:
        print(f"| {run_id} | {arch} | {'yes' if tta else 'no'} | {rate:.0f} | "
              f"{rate / base[tta]:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
