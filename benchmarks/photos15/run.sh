#!/usr/bin/env bash
# The photos15 benchmark: `fkd predict` over the 252 public photos15 photos (real video
# frames, people absent from faces15's training set) with the faces15 pipeline's ensemble
# (bash benchmarks/faces15/run.sh makes it) and flip-TTA, scored by
# ../shared/bin/photos15-score; once with the refinement pass (the default) and once without.
# Predictions go to a temporary folder (never into the repository). Run from the repository
# root: benchmarks/photos15/run.sh [RUN [fkd predict options]]; with options given, they
# replace the default --tta (e.g. `benchmarks/photos15/run.sh faces15-resnet-s0 --fallback none`).
set -euo pipefail
RUN=${1:-faces15-ensemble}
shift || true
[ $# -eq 0 ] && set -- --tta
PHOTOS=../shared/data/photos15/images
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export TF_CPP_MIN_LOG_LEVEL=3
for pass in refine no-refine; do
    echo "== $RUN, --$pass $*"
    .venv/bin/fkd predict "$RUN" "$PHOTOS" -o "$OUT/$pass.csv" --fallback whole "--$pass" "$@"
    ../shared/bin/photos15-score "$OUT/$pass.csv"
done
