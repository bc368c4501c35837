#!/usr/bin/env bash
# Installs (if missing), builds and runs the whole test suite.
#   scripts/test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_NUM_THREADS=1
cd build
ctest --output-on-failure -j "${FULCRUM_TEST_JOBS:-2}" "$@"
