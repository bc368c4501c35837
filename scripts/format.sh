#!/usr/bin/env bash
# Formats fulcrum's C++ with clang-format (.clang-format: Google base).
#   scripts/format.sh          rewrite files in place
#   scripts/format.sh --check  list unformatted files, exit 1 if any
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format: clang-format not installed"; exit 2; }
mapfile -t files < <(git ls-files '*.h' '*.cc')
if [ "${1:-}" = "--check" ]; then
  bad=0
  for f in "${files[@]}"; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then echo "unformatted: $f"; bad=1; fi
  done
  exit $bad
fi
clang-format -i "${files[@]}"
