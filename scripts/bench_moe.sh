#!/usr/bin/env bash
# Expert-parallel MoE layers on 2 ranks: tokens/s at ep 1 (every rank holds
# every expert: data parallelism) and ep 2 (experts split, tokens exchanged),
# the all-to-all bytes per step, dispatch + combine cost (without the
# exchange) against the expert FFN time, and the grouped expert GEMM rate
# against one dense FFN (see parallel/expert/moe_bench_main.cc). Then the
# whole DeepSeek-V2-shaped model of recipes/bench/moe_config.json trained
# through `fulcrum train` on 2 ranks at dp 2 (ep 1) and dp 2 x ep 2, and at
# ep 2 with an expert capacity, unpadded and padded to capacity slots: median
# tokens/s over 10 steps after 3 warm-up steps.
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

# The whole model through the trainer.
cmake --build "$build" --target fulcrum -- -j1 >/dev/null
work=$build/bench_moe
mkdir -p "$work"
if [ ! -f "$work/model/model.safetensors" ]; then
  "$build/fulcrum" init --config "$root/recipes/bench/moe_config.json" --out "$work/model" --seed 1
fi
python3 - "$work/data.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(200):
        f.write(json.dumps({"input_ids": [rng.randrange(3, 4096) for _ in range(256)]}) + "\n")
PY
# name -> overrides: dp 2 at ep 1 and ep 2 (dropless), and ep 2 with a
# capacity of 1.25, unpadded (counts exchanged, rows sliced on the host) and
# padded to capacity slots (no host read inside a layer).
declare -A layouts=([ep1]="parallel.ep=1" [ep2]="parallel.ep=2"
  [ep2_cap]="parallel.ep=2 moe.capacity_factor=1.25"
  [ep2_cap_padded]="parallel.ep=2 moe.capacity_factor=1.25 moe.pad_to_capacity=true")
for name in ep1 ep2 ep2_cap ep2_cap_padded; do
  rm -f "$work/$name.jsonl"
  # shellcheck disable=SC2086
  FULCRUM_MPI_BIND=$bind OMP_NUM_THREADS=1 "$root/scripts/mpirun.sh" 2 \
    "$build/fulcrum" train "$root/recipes/bench/moe.yaml" model.path="$work/model" \
    data.path="$work/data.jsonl" parallel.dp=2 ${layouts[$name]} \
    logging.metrics_file="$work/$name.jsonl" >/dev/null
done
python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
tps = {}
for name in ("ep1", "ep2", "ep2_cap", "ep2_cap_padded"):
    rows = [json.loads(l) for l in open(f"{work}/{name}.jsonl")]
    rows = [r for r in rows if "tokens_per_second" in r][3:]
    tps[name] = statistics.median(r["tokens_per_second"] for r in rows)
    dropped = sum(sum(r.get("moe_tokens_dropped", [])) for r in rows) / len(rows)
    print(f"whole model, dp 2 {name:15s}: {tps[name]:.0f} tokens/s (2 ranks), "
          f"peak RSS {max(r['peak_rss_bytes'] for r in rows) / 2**20:.0f} MiB on rank 0, "
          f"{dropped:.0f} choices dropped per step")
print(f"ep 2 / ep 1: {tps['ep2'] / tps['ep1']:.2f}; "
      f"padded / unpadded capacity: {tps['ep2_cap_padded'] / tps['ep2_cap']:.2f}")
PY
