"""Recall and time of ``fkd labels audit`` on known, planted label errors.

Copies a data set's training.csv with planted errors (whole-face and single-pair left/right
swaps, keypoints moved 8-15 px, images duplicated with other labels:
:func:`fkd_core.label_qa.plant_errors`) into a temporary folder, runs the real command and
reports which share of the planted errors is among the first 2 × (number planted) suspects.

    python benchmarks/bench_label_qa.py --data ../shared/data/faces15 --folds 5

The copy lives under the system's temporary folder and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fkd_core import dataset, kaggle, label_qa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--per-kind", type=int, default=10,
                        help="n: n face swaps, n pair swaps, 2n moved keypoints, n duplicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("audit_args", nargs="*", help="extra `fkd labels audit` options")
    args = parser.parse_args()
    train = dataset.load(args.data, parts=("training",)).require_train()
    truth, images, planted = label_qa.plant_errors(train.keypoints, train.images,
                                                   train.complete, args.seed, args.per_kind)
    with tempfile.TemporaryDirectory(prefix="fkd-planted-") as tmp:
        kaggle.write_training_csv(Path(tmp) / "training.csv", images, truth)
        out = Path(tmp) / "suspects.csv"
        cmd = [sys.executable, "-m", "fkd_core.cli", "labels", "audit", "--data", tmp,
               "--folds", str(args.folds), "-o", str(out), *args.audit_args]
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - started
        suspects = pd.read_csv(out, keep_default_na=False)
    found = label_qa.recall(suspects, planted, train.row_ids)
    kinds = {"face swap": planted[:args.per_kind],
             "pair swap": planted[args.per_kind:2 * args.per_kind],
             "moved 8-15 px": planted[2 * args.per_kind:4 * args.per_kind],
             "duplicate": planted[4 * args.per_kind:]}
    print(f"{len(train)} rows, {len(planted)} planted errors, {args.folds} folds: "
          f"recall in the first {2 * len(planted)} suspects {found:.1%}, "
          f"{seconds / 60:.1f} min")
    for name, part in kinds.items():
        share = label_qa.recall(suspects, part, train.row_ids, top=2 * len(planted))
        print(f"  {name:<14} {share:.0%} of {len(part)}")


if __name__ == "__main__":
    main()
