#!/usr/bin/env bash
# Step benchmark: a 55M-parameter Llama (hidden 512, 8 layers, 8 heads, 2 kv
# heads, ffn 1408, vocab 32000), seq 256, micro-batch 8, fp32, one rank with
# 2 threads. Prints the median tokens/s of full fine-tuning and of LoRA (r=16,
# all-linear) over 20 steps after 3 warm-up steps, the achieved model FLOP/s
# and the same process's fp32 GEMM peak (torch::mm 2048^3), as a ratio.
#   scripts/bench_step.sh [threads]
#
# With `layouts`, the parallel layouts on 2 ranks x 1 thread instead: full
# fine-tuning, global batch 8 in micro-batches of 4, as one rank with one
# thread, dp2, tp2 and dp2 + ZeRO-1: median tokens/s, speed-up over the one
# rank, peak RSS per rank and optimizer-state bytes per rank; and two
# independent one-rank runs at once, the ceiling the 2 cores allow.
#   scripts/bench_step.sh layouts
#
# With `recompute`, full fine-tuning with train.recompute none, selective and
# full (2 threads, 10 steps): median tokens/s after 3 warm-up steps, peak RSS
# and its drop from none (the activations not kept for backward).
#   scripts/bench_step.sh recompute
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-2}
threads=$mode
[ "$mode" = layouts ] && threads=1
[ "$mode" = recompute ] && threads=2
[ -x build/fulcrum ] || scripts/setup.sh
work=build/bench_step
mkdir -p "$work"
if [ ! -f "$work/model/model.safetensors" ]; then
  build/fulcrum init --config recipes/bench/config.json --out "$work/model" --seed 1
fi
python3 - "$work/data.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(200):
        f.write(json.dumps({"input_ids": [rng.randrange(3, 32000) for _ in range(256)]}) + "\n")
PY
if [ "$mode" = layouts ]; then
  run() {  # name ranks overrides...
    local name=$1 ranks=$2; shift 2
    rm -f "$work/$name.jsonl"
    OMP_NUM_THREADS=1 scripts/mpirun.sh "$ranks" build/fulcrum train recipes/bench/step.yaml \
      model.path="$work/model" data.path="$work/data.jsonl" batch.micro_batch=4 train.steps=13 \
      logging.metrics_file="$work/$name.jsonl" logging.every=100 "$@" >/dev/null
  }
  run one_rank 1
  # Two independent one-rank runs at once: what the 2 cores give together
  # (shared caches and memory bandwidth), the ceiling of any 2-rank layout.
  for i in 1 2; do
    rm -f "$work/pair$i.jsonl"
    OMP_NUM_THREADS=1 build/fulcrum train recipes/bench/step.yaml \
      model.path="$work/model" data.path="$work/data.jsonl" batch.micro_batch=4 train.steps=13 \
      logging.metrics_file="$work/pair$i.jsonl" logging.every=100 >/dev/null &
  done
  wait
  run dp2 2 parallel.dp=2
  run tp2 2 parallel.tp=2
  run dp2_zero1 2 parallel.dp=2 parallel.zero=1
  python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
base = None
print(f"{'layout':10s} {'ranks':>5s} {'tokens/s':>9s} {'vs 1 rank':>9s} {'peak RSS/rank':>14s} {'optim state/rank':>17s}")
for name, ranks in (("one_rank", 1), ("dp2", 2), ("tp2", 2), ("dp2_zero1", 2)):
    rows = [json.loads(l) for l in open(f"{work}/{name}.jsonl")]
    rows = [r for r in rows if "tokens_per_second" in r][3:]
    tps = statistics.median(r["tokens_per_second"] for r in rows)
    base = base or tps
    rss = max(r["peak_rss_bytes"] for r in rows) / 2**20
    opt = rows[-1]["optimizer_state_bytes"] / 2**20
    print(f"{name:10s} {ranks:5d} {tps:9.1f} {tps/base:8.2f}x {rss:10.0f} MiB {opt:13.1f} MiB")
pair = 0.0
for i in (1, 2):
    rows = [json.loads(l) for l in open(f"{work}/pair{i}.jsonl")]
    rows = [r for r in rows if "tokens_per_second" in r][3:]
    pair += statistics.median(r["tokens_per_second"] for r in rows)
print(f"{'2 x 1 rank':10s} {2:5d} {pair:9.1f} {pair/base:8.2f}x   (two independent one-rank runs at once: the machine's ceiling)")
print("goal: dp2 >= 1.8x one rank with one thread")
PY
  exit 0
fi
if [ "$mode" = recompute ]; then
  for recompute in none selective full; do
    rm -f "$work/recompute_$recompute.jsonl"
    OMP_NUM_THREADS=$threads build/fulcrum train recipes/bench/step.yaml \
      model.path="$work/model" data.path="$work/data.jsonl" train.steps=10 \
      train.recompute=$recompute logging.metrics_file="$work/recompute_$recompute.jsonl" \
      logging.every=100 >/dev/null
  done
  python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
print(f"{'recompute':10s} {'tokens/s':>9s} {'vs none':>8s} {'peak RSS':>10s} {'saved vs none':>14s}")
base_tps = base_rss = None
for mode in ("none", "selective", "full"):
    rows = [json.loads(l) for l in open(f"{work}/recompute_{mode}.jsonl")]
    rows = [r for r in rows if "tokens_per_second" in r]
    tps = statistics.median(r["tokens_per_second"] for r in rows[3:])
    rss = max(r["peak_rss_bytes"] for r in rows) / 2**20
    base_tps, base_rss = base_tps or tps, base_rss or rss
    print(f"{mode:10s} {tps:9.1f} {tps/base_tps:7.2f}x {rss:6.0f} MiB {base_rss - rss:10.0f} MiB")
PY
  exit 0
fi
for method in full lora; do
  rm -f "$work/$method.jsonl"
  OMP_NUM_THREADS=$threads build/fulcrum train recipes/bench/step.yaml \
    model.path="$work/model" data.path="$work/data.jsonl" finetune.method=$method \
    logging.metrics_file="$work/$method.jsonl" logging.every=100 >/dev/null
done
python3 - "$work" "$threads" <<'PY'
import json, statistics, sys
work, threads = sys.argv[1], sys.argv[2]
res = {}
for method in ("full", "lora"):
    rows = [json.loads(l) for l in open(f"{work}/{method}.jsonl")][3:]
    tps = statistics.median(r["tokens_per_second"] for r in rows)
    flops = statistics.median(r["flops_per_second_per_rank"] for r in rows)
    peak = rows[0]["peak_flops_per_rank"]
    res[method] = tps
    print(f"{method:5s}: {tps:7.1f} tokens/s  {flops/1e9:6.1f} GFLOP/s achieved  "
          f"peak {peak/1e9:6.1f} GFLOP/s  ratio {flops/peak:5.1%}  ({len(rows)} steps, {threads} threads)")
print(f"LoRA / full tokens/s: {res['lora']/res['full']:.2f}x")
print("reference (HF transformers, PyTorch 2.6 eager, fp32, 2 threads): full 321 tokens/s = 57% of a "
      "137 GFLOP/s peak; LoRA 1.31x full")
PY
