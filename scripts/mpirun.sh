#!/usr/bin/env bash
# mpirun with the flags fulcrum's tests and scripts need on one machine, as
# root in CI: the one place those flags live for shell callers.
#   scripts/mpirun.sh NP fulcrum train recipe.yaml ...
set -euo pipefail
np=$1; shift
exec mpirun --allow-run-as-root --oversubscribe --bind-to none \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -np "$np" "$@"
