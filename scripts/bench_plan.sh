#!/usr/bin/env bash
# Planner accuracy (issue 8): `fulcrum plan`'s predicted peak memory per rank
# and step time against training runs of the same layouts on this machine.
# The 55M bench Llama (recipes/bench/config.json, seq 256, global batch 8)
# and the DeepSeek-V2-shaped MoE (recipes/bench/moe_config.json) on 2 ranks
# x 1 thread: dp, ZeRO-1, tp (with and without sequence parallelism), pp
# (1F1B and GPipe), ep, LoRA vs full, and the recompute modes when the
# recipe has train.recompute. Each run trains a few steps with every rank
# writing its metrics; measured = the largest peak_rss_bytes over the ranks
# and steps, and the median step time after the first step. Prints one
# table: predicted vs measured memory with the error, and step times with
# their rank order.
#   scripts/bench_plan.sh [steps]     (default 4)
# FULCRUM_BENCH_PLAN_REUSE=1 reuses the runs' metrics already in the work
# dir (re-predicting only); FULCRUM_BIN names another fulcrum binary.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-4}
[ -x build/fulcrum ] || scripts/setup.sh
bin=${FULCRUM_BIN:-build/fulcrum}
work=build/bench_plan
mkdir -p "$work"
for model in dense:recipes/bench/config.json moe:recipes/bench/moe_config.json; do
  name=${model%%:*} config=${model#*:}
  if [ ! -f "$work/$name/model.safetensors" ]; then
    "$bin" init --config "$config" --out "$work/$name" --seed 1 >/dev/null
  fi
done
python3 - "$work" <<'PY'
import json, random, sys
rng = random.Random(0)
for name, vocab in (("dense", 32000), ("moe", 4096)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for _ in range(200):
            f.write(json.dumps({"input_ids": [rng.randrange(3, vocab) for _ in range(256)]}) + "\n")
PY

# name model recipe overrides... (every layout on 2 ranks)
layouts=(
  "dp2 dense step parallel.dp=2 batch.micro_batch=4"
  "dp2_zero1 dense step parallel.dp=2 parallel.zero=1 batch.micro_batch=4"
  "tp2 dense step parallel.tp=2 batch.micro_batch=4"
  "tp2_sp dense step parallel.tp=2 parallel.sequence_parallel=true batch.micro_batch=4"
  "pp2_1f1b dense step parallel.pp=2 batch.micro_batch=2"
  "pp2_gpipe dense step parallel.pp=2 parallel.pp_schedule=gpipe batch.micro_batch=2"
  "dp2_lora dense step parallel.dp=2 batch.micro_batch=4 finetune.method=lora"
  "tp2_lora dense step parallel.tp=2 batch.micro_batch=4 finetune.method=lora"
  "dp2_mb2 dense step parallel.dp=2 batch.micro_batch=2"
  "moe_dp2 moe moe parallel.dp=2"
  "moe_ep2 moe moe parallel.dp=2 parallel.ep=2"
  "moe_ep2_lora moe moe parallel.dp=2 parallel.ep=2 finetune.method=lora finetune.lora.targets=[all-linear]"
)
if grep -q "recompute" trainer/recipe/recipe.h; then
  layouts+=(
    "dp2_selective dense step parallel.dp=2 batch.micro_batch=4 train.recompute=selective"
    "dp2_full_rc dense step parallel.dp=2 batch.micro_batch=4 train.recompute=full"
  )
fi

# One measured GEMM peak and AdamW bandwidth per rank (1 thread) for every
# plan, so that the predictions differ by layout only.
probe=$(OMP_NUM_THREADS=1 "$bin" plan recipes/bench/step.yaml model.path=$work/dense \
  data.path=$work/dense.jsonl parallel.dp=2 batch.micro_batch=4)
tflops=$(sed -n 's|.* \([0-9.e+-]*\) TFLOP/s per rank.*|\1|p' <<<"$probe")
gbps=$(sed -n 's|.*, memory \([0-9.e+-]*\) GB/s per rank.*|\1|p' <<<"$probe")
echo "measured per rank: fp32 GEMM peak $tflops TFLOP/s, AdamW bandwidth $gbps GB/s"
for layout in "${layouts[@]}"; do
  read -r name model recipe overrides <<<"$layout"
  args="recipes/bench/$recipe.yaml model.path=$work/$model data.path=$work/$model.jsonl $overrides"
  "$bin" plan $args --gpu-tflops "$tflops" --memory-gbps "$gbps" >"$work/$name.plan" 2>&1 || { cat "$work/$name.plan"; exit 1; }
  if [ "${FULCRUM_BENCH_PLAN_REUSE:-0}" = 1 ] && ls "$work/$name".r*.jsonl >/dev/null 2>&1; then
    continue
  fi
  rm -f "$work/$name".r*.jsonl
  # Each rank writes its own metrics file (logging.all_ranks).
  OMP_NUM_THREADS=1 scripts/mpirun.sh 2 bash -c "exec $bin train $args train.steps=$steps \
    logging.every=100 logging.all_ranks=true \
    logging.metrics_file=$work/$name.r\${OMPI_COMM_WORLD_RANK}.jsonl" >"$work/$name.log" 2>&1 ||
    { tail -5 "$work/$name.log"; exit 1; }
done

names=()
for layout in "${layouts[@]}"; do names+=("${layout%% *}"); done
python3 - "$work" "${names[@]}" <<'PY'
import glob, json, re, statistics, sys
work = sys.argv[1]
units = {"MiB": 2**20, "GiB": 2**30}
rows = []
for name in sys.argv[2:]:
    plan = open(f"{work}/{name}.plan").read()
    total = re.search(r"^  total\s+([\d.]+) (MiB|GiB)", plan, re.M)
    stage = re.search(r"worst rank = pipeline stage (\d+)", plan).group(1)
    step = float(re.search(r"^step time: ([\d.]+) s", plan, re.M).group(1))
    predicted = float(total.group(1)) * units[total.group(2)]
    peak, times = 0, []
    for path in glob.glob(f"{work}/{name}.r*.jsonl"):
        steps = [json.loads(l) for l in open(path) if "peak_rss_bytes" in l]
        peak = max([peak] + [r["peak_rss_bytes"] for r in steps])
        times.append(statistics.median(r["step_seconds"] for r in steps[1:]))
    rows.append((name, stage, predicted, peak, step, max(times)))
print(f"{'layout':14s} {'worst':>5s} {'predicted':>10s} {'measured':>10s} {'error':>7s}"
      f" {'step pred':>10s} {'step meas':>10s} {'rank pred':>9s} {'rank meas':>9s}")
order_p = sorted(rows, key=lambda r: r[4])
order_m = sorted(rows, key=lambda r: r[5])
within = 0
for r in rows:
    err = (r[2] - r[3]) / r[3]
    within += abs(err) <= 0.15
    print(f"{r[0]:14s} {'s' + r[1]:>5s} {r[2]/2**20:6.0f} MiB {r[3]/2**20:6.0f} MiB {err:+7.1%}"
          f" {r[4]:8.2f} s {r[5]:8.2f} s {order_p.index(r) + 1:9d} {order_m.index(r) + 1:9d}")
# Rank agreement: pairs of layouts whose predicted and measured step times
# are ordered alike (Kendall's concordant share; a predicted tie counts as
# a disagreement). This machine's step times move by about 5% between runs
# of one layout, so the pairs measured further apart than that are also
# counted on their own: they are the orderings a measurement can confirm.
noise = 0.05
pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
agree = sum((a[4] - b[4]) * (a[5] - b[5]) > 0 for a, b in pairs)
apart = [(a, b) for a, b in pairs if abs(a[5] - b[5]) > noise * min(a[5], b[5])]
agree_apart = sum((a[4] - b[4]) * (a[5] - b[5]) > 0 for a, b in apart)
ties = sum(a[4] == b[4] for a, b in pairs)
print(f"memory within 15%: {within}/{len(rows)}; step-time pairs ordered alike: "
      f"{agree}/{len(pairs)} ({ties} predicted ties); of the pairs measured more than "
      f"{noise:.0%} apart: {agree_apart}/{len(apart)}")
PY
