#!/usr/bin/env bash
# Expert-parallel MoE layers on 2 ranks: tokens/s at ep 1 (every rank holds
# every expert: data parallelism) and ep 2 (experts split, tokens exchanged),
# the all-to-all bytes per step, dispatch + combine cost (without the
# exchange) against the expert FFN time, and the grouped expert GEMM rate
# against one dense FFN (see parallel/expert/moe_bench_main.cc).
#   scripts/bench_moe.sh [BUILD_DIR] [STEPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
steps=${2:-5}
if [[ ! -f "$build/build.ninja" && ! -f "$build/Makefile" ]]; then
  cmake -S "$root" -B "$build" -G Ninja >/dev/null
fi
cmake --build "$build" --target fulcrum_bench_moe -- -j1 >/dev/null
echo "machine: $(nproc) cores"
bind=none
[ 2 -le "$(nproc)" ] && bind=core
for ep in 1 2; do
  FULCRUM_MPI_BIND=$bind OMP_NUM_THREADS=1 "$root/scripts/mpirun.sh" 2 \
    "$build/fulcrum_bench_moe" "$ep" "$steps"
done
