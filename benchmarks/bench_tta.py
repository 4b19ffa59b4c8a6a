"""Shift/scale test-time augmentation on top of flip-TTA: does it pay on faces15?

Usage: python benchmarks/bench_tta.py RUN [RUN ...] --data ../shared/data/faces15
                                      [--shift 2] [--scale 0.04] [--out FILE]

For each run, its own validation faces are predicted as they are and through small affine
re-crops (zoom in and out by ``--scale`` about the centre, shifts of ``--shift`` px along x
and y), each with flip-TTA; every prediction is mapped back to the original face and the
sets are averaged. Prints validation RMSE per set and the inference cost relative to
flip-TTA alone (ratios measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fkd_core import dataset, metrics
from fkd_core.evaluation import evaluation_rows
from fkd_core.keypoints import IMAGE_SIZE
from fkd_core.photos import apply, crop, invert
from fkd_core.runs import resolve

CENTRE = (IMAGE_SIZE - 1) / 2


def transform(scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Face → re-crop, 2×3: zoom by ``scale`` about the centre, then shift by (dx, dy)."""
    return np.array([[scale, 0.0, CENTRE * (1 - scale) + dx],
                     [0.0, scale, CENTRE * (1 - scale) + dy]])


def predict_through(run, images: np.ndarray, matrix: np.ndarray, model) -> np.ndarray:
    """Flip-TTA prediction of the re-cropped faces, mapped back to the original faces."""
    crops = images if np.allclose(matrix, transform()) else np.stack(
        [crop(img, matrix) for img in images])
    pred = run.predict(crops, tta=True, model=model).astype(np.float64)
    off = run.label_offset
    pred[:, 0::2] -= off  # the maths in pixel-index coordinates, as the crops are
    back = apply(invert(matrix), pred)
    back[:, 0::2] += off
    return back


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default="models")
    ap.add_argument("--shift", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=0.04)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    data = dataset.load(args.data, parts=("training",)).require_train()
    s, d = args.scale, args.shift
    sets = {
        "flip": [transform()],
        "flip + scale": [transform(), transform(1 + s), transform(1 - s)],
        "flip + shift": [transform(), transform(dx=d), transform(dx=-d), transform(dy=d),
                         transform(dy=-d)],
    }
    sets["flip + scale + shift"] = sets["flip + scale"] + sets["flip + shift"][1:]
    results = []
    for run_id in args.runs:
        run = resolve(run_id, args.models)
        model = run.load_model()
        rows = evaluation_rows(run, data, "val")
        images, truth = data.images[rows], data.keypoints[rows]
        run.predict(images[:8], tta=True, model=model)  # tracing, not timed
        preds, seconds = {}, {}
        for m in {tuple(m.ravel()) for ms in sets.values() for m in ms}:
            t0 = time.perf_counter()
            preds[m] = predict_through(run, images, np.array(m).reshape(2, 3), model)
            seconds[m] = time.perf_counter() - t0
        base = seconds[tuple(transform().ravel())]
        for name, ms in sets.items():
            keys = [tuple(m.ravel()) for m in ms]
            pred = np.mean([preds[k] for k in keys], axis=0)
            row = {"run": run.id, "set": name, "views": 2 * len(ms),
                   "val_rmse": round(float(metrics.rmse(pred, truth)), 4),
                   "cost_vs_flip": round(sum(seconds[k] for k in keys) / base, 2)}
            results.append(row)
            print(f"{run.id:24s} {name:22s} views {row['views']:2d}  val RMSE "
                  f"{row['val_rmse']:.4f}  cost ×{row['cost_vs_flip']:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"command": "python benchmarks/bench_tta.py " + " ".join(argv or []),
                       "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
