#!/usr/bin/env bash
# Bus bandwidth of fulcrum's MPI communicator next to the raw MPI calls on the
# same buffers (all_reduce, reduce_scatter, all_gather, all_to_all; 4 KiB ..
# 64 MiB, fp32), on 2 ranks by default.
#   scripts/bench_comm.sh [BUILD_DIR] [NP] [MAX_BYTES]
# Builds the fulcrum_bench_comm target first when needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
np=${2:-2}
max_bytes=${3:-67108864}
if [[ ! -f "$build/build.ninja" && ! -f "$build/Makefile" ]]; then
  cmake -S "$root" -B "$build" -G Ninja >/dev/null
fi
cmake --build "$build" --target fulcrum_bench_comm -- -j1 >/dev/null
OMP_NUM_THREADS=1 exec "$root/scripts/mpirun.sh" "$np" "$build/fulcrum_bench_comm" "$max_bytes"
