#!/usr/bin/env bash
# The faces15 accuracy benchmark: the pipeline in recipes/faces15.toml (members, their
# ensemble, the test-set submission), capped at 90 minutes on this 2-core CPU. A killed run
# resumes where it stopped when started again. Run from the repository root.
set -euo pipefail
DATA=../shared/data/faces15
.venv/bin/fkd pipeline recipes/faces15.toml --data "$DATA" --max-minutes 90 \
    -o benchmarks/faces15/submission.csv
../shared/bin/faces15-score benchmarks/faces15/submission.csv
