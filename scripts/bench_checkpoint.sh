#!/usr/bin/env bash
# Checkpoint benchmark: a ~290M-parameter Llama (recipes/bench/checkpoint.yaml,
# ~3.5 GB per checkpoint) trained on 2 ranks (dp 2 + ZeRO-1, one thread
# each). In one run it prints:
#   - the disk's write bandwidth: dd of 2 GiB with conv=fsync in the same
#     directory, before and after the synchronous saves (it varies);
#   - synchronous save throughput (all ranks' bytes / wall time of the save,
#     fsync and rename included) and the step time it interrupts;
#   - load throughput on the same layout, and bytes read per rank against the
#     bytes the rank needs when resharding to tp 2 and to pp 2 (goal <= 1.2x);
#     the page cache is dropped before each load when this user may.
#   - asynchronous save: the time training waits at a save (copy to host
#     memory, publishing) against a step, and the steps written under.
#   - export of the checkpoint to HF safetensors (fp32 and bf16, shards of
#     500 MB) with its self-check: time, throughput, and the exporting
#     process's peak memory against the size of the model it streams.
# Goals: synchronous save >= 50% of the dd bandwidth; async stall <= 10%.
#   scripts/bench_checkpoint.sh [work dir, default build/bench_checkpoint]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/fulcrum ] || scripts/setup.sh
work=${1:-build/bench_checkpoint}
mkdir -p "$work"
if [ ! -f "$work/model/model.safetensors" ]; then
  build/fulcrum init --config recipes/bench/checkpoint_config.json --out "$work/model" --seed 1 \
    >/dev/null
fi
python3 - "$work/data.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        f.write(json.dumps({"input_ids": [rng.randrange(3, 32000) for _ in range(128)]}) + "\n")
PY
drop_caches() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo dropped; else echo kept; fi
}
run() {  # log ranks overrides...
  local log=$1 ranks=$2; shift 2
  OMP_NUM_THREADS=1 scripts/mpirun.sh "$ranks" build/fulcrum train recipes/bench/checkpoint.yaml \
    model.path="$work/model" data.path="$work/data.jsonl" "$@" >"$work/$log" 2>&1 ||
    { cat "$work/$log"; exit 1; }
}
rm -rf "$work/ckpt" "$work/dd.bin" "$work/save.jsonl" "$work/async.jsonl"
dd_line=$(dd if=/dev/zero of="$work/dd.bin" bs=64M count=32 conv=fsync 2>&1 | tail -1)
rm -f "$work/dd.bin"
run save.log 2 parallel.dp=2 parallel.zero=1 checkpoint.dir="$work/ckpt" \
  logging.metrics_file="$work/save.jsonl"
dd_after=$(dd if=/dev/zero of="$work/dd.bin" bs=64M count=32 conv=fsync 2>&1 | tail -1)
rm -f "$work/dd.bin"
# Asynchronous: saves after steps 2 and 4 are written while steps 3-4 and 5-6
# train (the one after step 6, the last, is waited for).
rm -rf "$work/ckpt_async"
run async.log 2 parallel.dp=2 parallel.zero=1 checkpoint.dir="$work/ckpt_async" \
  checkpoint.every=2 checkpoint.async=true train.steps=6 logging.metrics_file="$work/async.jsonl"
rm -rf "$work/ckpt_async"
cache_same=$(drop_caches)
run load.log 2 parallel.dp=2 parallel.zero=1 checkpoint.dir="$work/ckpt" checkpoint.resume=latest \
  logging.all_ranks=true
cache_tp=$(drop_caches)
run reshard_tp.log 2 parallel.tp=2 checkpoint.dir="$work/ckpt" checkpoint.resume=latest \
  logging.all_ranks=true
cache_pp=$(drop_caches)
run reshard_pp.log 2 parallel.pp=2 checkpoint.dir="$work/ckpt" checkpoint.resume=latest \
  logging.all_ranks=true
for dtype in fp32 bf16; do
  rm -rf "$work/export_$dtype"
  build/fulcrum export --checkpoint "$work/ckpt" --format hf --dtype $dtype \
    --max-shard-size 500000000 --out "$work/export_$dtype" >"$work/export_$dtype.log" 2>&1 ||
    { cat "$work/export_$dtype.log"; exit 1; }
done
python3 - "$work" "$dd_line" "$dd_after" "$cache_same" "$cache_tp" "$cache_pp" <<'PY'
import json, re, sys
work, dd_line, dd_after, caches = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def rate(line):
    m = re.search(r"([\d.]+) s, ([\d.]+) ([kMG])B/s", line)
    return float(m.group(2)) * {"k": 1e-6, "M": 1e-3, "G": 1.0}[m.group(3)]
dd, dd2 = rate(dd_line), rate(dd_after)
saves = [(float(a), float(b)) for a, b in
         re.findall(r"checkpoint: \S+ \(([\d.]+) MiB in ([\d.]+) s", open(f"{work}/save.log").read())]
steps = [json.loads(l)["step_seconds"] for l in open(f"{work}/save.jsonl") if "step_seconds" in l]
print(f"disk write bandwidth (dd 2 GiB, conv=fsync): {dd:.2f} GB/s before the saves, {dd2:.2f} GB/s after")
print(f"{'save':6s} {'GiB':>6s} {'seconds':>8s} {'GB/s':>6s} {'vs dd':>6s} {'step s':>7s}  (save 1 against dd before, save 2 against dd after)")
for i, (mib, sec) in enumerate(saves):
    gbs = mib * 2**20 / 1e9 / sec
    ref = dd if i == 0 else dd2
    print(f"sync {i+1:<2d}{mib/1024:6.2f} {sec:8.2f} {gbs:6.2f} {100*gbs/ref:5.0f}% {steps[i]:7.2f}")
steps_async = [json.loads(l)["step_seconds"] for l in open(f"{work}/async.jsonl") if "step_seconds" in l]
log = open(f"{work}/async.log").read()
starts = [float(x) for x in re.findall(r"r0\] checkpoint: step \d+ copied to host memory in ([\d.]+) s", log)]
publishes = [float(x[1]) for x in re.findall(r"r0\] checkpoint: \S+ \([\d.]+ MiB written in the background; training waited ([\d.]+) s to start it and ([\d.]+) s to publish", log)]
# A step without a save around it: the fastest after the first (warm-up).
base = min(steps_async[1:] + steps[1:])
print(f"async: steps 1-6 take {', '.join(f'{s:.2f}' for s in steps_async)} s (sync run's steps: "
      f"{', '.join(f'{s:.2f}' for s in steps)} s)")
for i, (st, pub) in enumerate(zip(starts, publishes)):
    overlapped = steps_async[2 * i + 2] if 2 * i + 2 < len(steps_async) else None
    if overlapped is None:  # after the last step: the run ends once it is written
        print(f"async save after step {2*i+2} (the last): {st:.2f} s to copy, then the run waits "
              f"{pub:.2f} s for the write to finish before it ends")
        continue
    print(f"async save after step {2*i+2}: training blocked {st:.2f} s to copy + {pub:.2f} s to publish it"
          f" = {100*(st+pub)/base:.1f}% of a step; the step written under took {overlapped:.2f} s "
          f"({100*(overlapped/base-1):+.0f}% vs {base:.2f})")
print(f"{'load':22s} {'rank':>4s} {'read MiB':>9s} {'needed MiB':>10s} {'read/needed':>11s} {'s':>6s} {'GB/s':>6s} page cache")
pattern = re.compile(r"\[fulcrum r(\d+)\].*resumed from \S+ at step \d+: read ([\d.]+) MiB for the ([\d.]+) MiB this rank holds in ([\d.]+) s")
for (name, log), cache in zip((("same layout (dp2 zero1)", "load"), ("reshard to tp 2", "reshard_tp"),
                               ("reshard to pp 2", "reshard_pp")), caches):
    for rank, read, need, sec in pattern.findall(open(f"{work}/{log}.log").read()):
        read, need, sec = float(read), float(need), float(sec)
        print(f"{name:22s} {rank:>4s} {read:9.1f} {need:10.1f} {read/need:10.3f}x {sec:6.2f} "
              f"{read*2**20/1e9/sec:6.2f} {cache}")
model_mb = None
for dtype in ("fp32", "bf16"):
    log = open(f"{work}/export_{dtype}.log").read()
    m = re.search(r"fulcrum export: (\d+) tensors \(([\d.]+) MB, (\w+)\) in (\d+) file\(s\) to \S+ in ([\d.]+) s; "
                  r"([\d.]+) MB read from the checkpoint; peak memory ([\d.]+) MB", log)
    c = re.search(r"max \|diff\| (\S+) \(largest logit (\S+), tolerance (\S+)\)", log)
    n, mb, dt, files, sec, read, peak = m.groups()
    if model_mb is None: model_mb = float(mb)
    print(f"export {dtype}: {n} tensors, {float(mb):.0f} MB in {files} files in {float(sec):.1f} s "
          f"({float(mb)/1e3/float(sec):.2f} GB/s written, self-check included); read {float(read):.0f} MB of the checkpoint; "
          f"peak memory {float(peak):.0f} MB = {100*float(peak)/model_mb:.0f}% of the {model_mb:.0f} MB fp32 model; "
          f"self-check max |diff| {c.group(1)} (largest logit {c.group(2)}, tolerance {c.group(3)})")
print("goals: sync save >= 50% of dd; async stall <= 10% of a step; bytes read <= 1.2x needed")
PY
