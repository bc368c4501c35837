#!/usr/bin/env bash
# The embedded default: builds fulcrum, creates a tiny Llama (once) with the
# bundled byte-level BPE tokenizer, fine-tunes it with LoRA on the bundled
# instruction data (tokenized through the ChatML template) with mpirun on 2
# data-parallel ranks, shows the training and validation loss, exports the
# merged model and the PEFT adapter, and generates an answer with the result.
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
# The model directory carries its tokenizer, as a Hugging Face checkpoint does:
# export copies it on, and generate reads it from there.
cp recipes/tiny/tokenizer.json recipes/tiny/tokenizer_config.json "$out/tiny/model/"
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
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if "val_loss" in r]
print(f"demo: {len(train)} steps, loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}")
if evals:
    print("demo: validation loss " + ", ".join(f"{e['val_loss']:.4f} (step {e['step']})" for e in evals))
PY
echo "demo: exported $out/export/merged (HF model) and $out/export/peft (PEFT adapter)"
prompt="What is the capital of France?"
echo "demo: generate --prompt \"$prompt\" (greedy, merged model):"
"$bin" generate --model "$out/export/merged" --prompt "$prompt" --max-new-tokens 24
