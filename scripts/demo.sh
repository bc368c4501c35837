#!/usr/bin/env bash
# The embedded default: builds fulcrum, creates a tiny Llama (once), fine-tunes
# it with LoRA on the bundled data with mpirun on 2 data-parallel ranks, shows
# the loss falling, and exports the merged model and the PEFT adapter.
#   scripts/demo.sh [key.path=value ...]   (recipe overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=demo_out
bin=build/fulcrum
mkdir -p "$out"
if [ ! -f "$out/tiny/model/model.safetensors" ]; then
  "$bin" init --config recipes/tiny/config.json --out "$out/tiny/model" --seed 7
fi
ranks=${FULCRUM_DEMO_RANKS:-2}
rm -rf "$out/checkpoints" "$out/metrics.jsonl"
"$bin" validate recipes/tiny/lora.yaml model.path="$out/tiny/model" parallel.dp="$ranks" \
  checkpoint.dir="$out/checkpoints" "$@"
scripts/mpirun.sh "$ranks" "$bin" train recipes/tiny/lora.yaml \
  model.path="$out/tiny/model" parallel.dp="$ranks" checkpoint.dir="$out/checkpoints" \
  logging.metrics_file="$out/metrics.jsonl" "$@"
"$bin" export --checkpoint "$out/checkpoints" --format merged --out "$out/export/merged"
"$bin" export --checkpoint "$out/checkpoints" --format peft --out "$out/export/peft"
python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
first, last = rows[0]["loss"], rows[-1]["loss"]
print(f"demo: {len(rows)} steps, loss {first:.4f} -> {last:.4f}")
PY
echo "demo: exported $out/export/merged (HF model) and $out/export/peft (PEFT adapter)"
