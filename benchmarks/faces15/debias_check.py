"""Would subtracting each member's mean validation error help? A check before adopting it.

Usage: .venv/bin/python benchmarks/faces15/debias_check.py ENSEMBLE_RUN --data DIR [--out DIR]

Writes, for the ensemble run and each of its members, its flip-TTA test submission as
``fkd`` writes it (``<run>.csv``) and the same with ``debias`` (``<run>-debiased.csv``: each
model's predictions minus its mean error per coordinate on its own validation rows,
:func:`fkd_core.evaluation.validation_bias`; nothing from the test set) under --out, to be
scored with ``../shared/bin/faces15-score``. Also prints, per member, the 2-fold
cross-validated change of its validation RMSE (the bias fitted on one half of its validation
rows, scored on the other, 20 random splits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fkd_core import dataset, evaluation, runs  # noqa: E402


def cross_validated_ratio(pred: np.ndarray, truth: np.ndarray, splits: int = 20) -> float:
    """Validation RMSE after subtracting a bias fitted on the other half, ÷ before."""
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(splits):
        order = rng.permutation(len(truth))
        halves = order[: len(order) // 2], order[len(order) // 2:]
        for fit, score in (halves, halves[::-1]):
            bias = np.nanmean(pred[fit] - truth[fit], axis=0)
            ratios.append(np.nanmean((pred[score] - bias - truth[score]) ** 2)
                          / np.nanmean((pred[score] - truth[score]) ** 2))
    return float(np.sqrt(np.mean(ratios)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ensemble")
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "debias")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ensemble = runs.resolve(Path(args.models) / args.ensemble)
    data = dataset.load(Path(args.data), parts=("test", "lookup"))
    for run_id in ensemble.config["members"]:
        member = runs.resolve(Path(args.models) / run_id)
        val, bias = member.val_predictions, evaluation.validation_bias(member)
        print(f"{run_id}: mean validation error x {np.mean(bias[0::2]):+.3f} px, "
              f"y {np.mean(bias[1::2]):+.3f} px; validation RMSE × "
              f"{cross_validated_ratio(val['pred_tta'], val['truth']):.4f} (2-fold)")
    for run_id in (*ensemble.config["members"], args.ensemble):
        run = runs.resolve(Path(args.models) / run_id)
        for suffix, debias in (("", False), ("-debiased", True)):
            frame = evaluation.submission(run, data, tta=True, debias=debias)
            evaluation.write_submission(frame, args.out / f"{run_id}{suffix}.csv")
    print(f"written under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
