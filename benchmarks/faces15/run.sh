#!/usr/bin/env bash
# The faces15 accuracy benchmark: the best single-model recipe, trained on this 2-core CPU
# (≤ 60 minutes), then the test-set submission. Run from the repository root.
set -euo pipefail
DATA=../shared/data/faces15
.venv/bin/fkd train --data "$DATA" --arch resnet --head heatmap --epochs 60 --max-minutes 58 \
    --run-id faces15-resnet-heatmap-cal
.venv/bin/fkd submit faces15-resnet-heatmap-cal --data "$DATA" -o benchmarks/faces15/submission.csv
../shared/bin/faces15-score benchmarks/faces15/submission.csv
