#!/usr/bin/env bash
# Measured pipeline bubble per schedule next to its theory, and the
# activation memory each schedule holds, for pp=2 and pp=4 with 8
# micro-batches (a synthetic Linear+tanh stage model; see
# parallel/pipeline/pipeline_bench_main.cc).
#   scripts/bench_pipeline.sh [BUILD_DIR] [MICRO_BATCHES] [STEPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
micro=${2:-8}
steps=${3:-5}
if [[ ! -f "$build/build.ninja" && ! -f "$build/Makefile" ]]; then
  cmake -S "$root" -B "$build" -G Ninja >/dev/null
fi
cmake --build "$build" --target fulcrum_bench_pipeline -- -j1 >/dev/null
echo "machine: $(nproc) cores; ranks beyond the core count share cores (the bubble then also counts waiting for a core)"
for pp in 2 4; do
  # One core per stage when there are enough: a rank that migrates between
  # cores runs slower than its neighbour, and unequal stages add bubble.
  bind=none
  [ "$pp" -le "$(nproc)" ] && bind=core
  FULCRUM_MPI_BIND=$bind OMP_NUM_THREADS=1 "$root/scripts/mpirun.sh" "$pp" \
    "$build/fulcrum_bench_pipeline" "$micro" "$steps"
done
