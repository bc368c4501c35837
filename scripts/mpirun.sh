#!/usr/bin/env bash
# mpirun with the flags fulcrum's tests and scripts need on one machine, as
# root in CI: the one place those flags live for shell callers.
#   scripts/mpirun.sh NP fulcrum train recipe.yaml ...
# FULCRUM_MPI_BIND=core pins each rank to a core (benchmarks with no more
# ranks than cores); the default leaves ranks free to share cores.
set -euo pipefail
np=$1; shift
exec mpirun --allow-run-as-root --oversubscribe --bind-to "${FULCRUM_MPI_BIND:-none}" \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -np "$np" "$@"
