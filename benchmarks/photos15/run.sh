#!/usr/bin/env bash
# The photos15 benchmark: `fkd predict` with the faces15 run over the 252 public photos15
# photos (real video frames, people absent from faces15's training set), scored by
# ../shared/bin/photos15-score; once with the refinement pass (the default) and once without.
# Predictions go to a temporary folder (never into the repository). Run from the repository
# root: benchmarks/photos15/run.sh [RUN] (default faces15-ensemble, the pipeline's result); extra arguments after
# RUN go to `fkd predict` (e.g. --tta).
set -euo pipefail
RUN=${1:-faces15-ensemble}
shift || true
PHOTOS=../shared/data/photos15/images
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export TF_CPP_MIN_LOG_LEVEL=3
for pass in refine no-refine; do
    echo "== $RUN, --$pass $*"
    .venv/bin/fkd predict "$RUN" "$PHOTOS" -o "$OUT/$pass.csv" --fallback whole "--$pass" "$@"
    ../shared/bin/photos15-score "$OUT/$pass.csv"
done
