#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, CUDA, a pip PyTorch (a CUDA
# LibTorch is inside its wheel) and the nvidia-nccl wheel, but none of
# fulcrum's other packages and no package registry. It builds fulcrum with
# the NCCL backend against that LibTorch, runs the tests that need CUDA, then
# the step benchmark in bf16 on one GPU, printing tokens/s and MFU.
#
#   scripts/gpu_check.sh download   # on Debian 12: fetch the packages into .devdeps/
#   scripts/gpu_check.sh            # on the GPU machine; logs under $OUT (or build-gpu/logs)
#
# The packages are Debian 12's (Open MPI, yaml-cpp, Abseil, nlohmann-json,
# PCRE2, ICU, GoogleTest, pkgconf), unpacked with dpkg -x under
# FULCRUM_DEVDEPS_PREFIX (default /opt/devdeps), never into /.
# GPU_CHECK_LAYERS (default 8) sets the depth of the Llama-3-8B-shaped
# benchmark model; GPU_CHECK_STEPS (default 12) its steps. GPU_CHECK_STOP_AFTER=
# configure stops after configuring (a dry run of the relocated packages).
# The steps' limits keep the whole check inside one 10-minute call of a lent
# machine (a 15-minute lease holds one such call and its start); the logs and
# the metrics (at most 8 files) land under $OUT as each step ends.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

packages=(
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 libpsm-infinipath1 libpsm2-2
  librdmacm1 libibverbs1 libnuma1 libnl-3-200 libnl-route-3-200 libmunge2
  libyaml-cpp-dev libyaml-cpp0.7 libabsl-dev libabsl20220623 nlohmann-json3-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libicu-dev libicu72
  libgtest-dev pkgconf pkgconf-bin libpkgconf3
)
if [ "${1:-}" = download ]; then
  mkdir -p .devdeps
  cd .devdeps && exec apt-get download "${packages[@]}"
fi
ls .devdeps/*.deb >/dev/null 2>&1 || {
  echo "gpu_check: no .devdeps/*.deb: run 'scripts/gpu_check.sh download' on Debian 12 first" >&2
  exit 1
}

logs=${OUT:-$root/build-gpu/logs}
mkdir -p "$logs"
status=0
# step NAME TIMEOUT_S CMD...: runs CMD with its output in $logs/NAME.log,
# prints its tail and the time it took; a failed step fails the check.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name"
  start=$(date +%s)
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  tail -n 25 "$logs/$name.log"
  echo "== $name: exit $rc after $(($(date +%s) - start)) s"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

# 1. The packages, relocated: pkg-config files and Open MPI/PMIx learn the prefix.
prefix=${FULCRUM_DEVDEPS_PREFIX:-/opt/devdeps}
usr=$prefix/usr
lib=$usr/lib/x86_64-linux-gnu
mkdir -p "$prefix"
for deb in .devdeps/*.deb; do dpkg -x "$deb" "$prefix"; done
sed -i "s|^prefix=/usr\$|prefix=$usr|" "$lib"/pkgconfig/*.pc
export PKG_CONFIG_PATH=$lib/pkgconfig PKG_CONFIG_LIBDIR=$lib/pkgconfig
export OPAL_PREFIX=$usr PMIX_INSTALL_PREFIX=$usr
export LD_LIBRARY_PATH=$lib:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$usr/bin:$PATH
# One process per GPU, started without mpirun: no daemon, shared memory only.
export OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# 2. LibTorch and NCCL from the Python wheels.
python=${PYTHON:-python3}
torch_cmake=${FULCRUM_TORCH_CMAKE:-$($python -c 'import torch; print(torch.utils.cmake_prefix_path)')}
nccl_root=${NCCL_ROOT:-$($python -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null)}
echo "gpu_check: torch $($python -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1)," \
  "LibTorch cmake $torch_cmake, NCCL $nccl_root"
# The header and library wherever the wheels (or CUDA) put them.
site=$($python -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
nccl_h=$(find "$nccl_root" "$site/nvidia" /usr/local/cuda/ -name nccl.h 2>/dev/null | head -n 1)
nccl_so=$(find "$nccl_root" "$site/nvidia" /usr/local/cuda/ -name 'libnccl.so*' 2>/dev/null | head -n 1)
echo "gpu_check: nccl.h ${nccl_h:-missing}, ${nccl_so:-libnccl missing}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

build=${FULCRUM_GPU_BUILD:-$root/build-gpu}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
step configure 120 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 `# CMake 4 and the older packages' config files` \
  -DCMAKE_PREFIX_PATH="$torch_cmake;$usr" -DFULCRUM_WERROR=OFF \
  -DCUDAToolkit_ROOT="$cuda_home" -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc" \
  -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_CUDA_ARCHITECTURES=90 -DNCCL_ROOT="$nccl_root" -DCUDA_HOME="$cuda_home" \
  ${nccl_h:+-DNCCL_INCLUDE_DIR="$(dirname "$nccl_h")"} ${nccl_so:+-DNCCL_LIBRARY="$nccl_so"} \
  -DMPI_C_COMPILER=MPI_C_COMPILER-NOTFOUND -DMPI_SKIP_COMPILER_WRAPPER=ON \
  -DMPI_C_HEADER_DIR="$lib/openmpi/include" -DMPI_C_LIB_NAMES=mpi \
  -DMPI_mpi_LIBRARY="$lib/openmpi/lib/libmpi.so" -DICU_ROOT="$usr" \
  -DPKG_CONFIG_EXECUTABLE="$usr/bin/pkgconf" || exit 1
grep -E "fulcrum: (LibTorch|NCCL)" "$logs/configure.log"
# A dry run on a machine without a GPU stops here.
[ "${GPU_CHECK_STOP_AFTER:-}" = configure ] && exit $status

# 3. The binary and the CUDA tests (-k 0: every compile error in one log).
step build 330 ninja -C "$build" -k 0 -j "$(nproc)" fulcrum cuda_cuda_parity_test \
  cuda_nccl_communicator_test ||
  { grep -E "error|Error" "$logs/build.log" | head -n 60; exit 1; }

# 4. Tests that need CUDA.
# (the NCCL test bootstraps a singleton MPI world: the isolated singleton above)
step cuda_tests 90 bash -c 'rc=0; for t in "$@"; do "$t" --gtest_color=no || rc=1; done; exit $rc' _ \
  "$build/tests/cuda_cuda_parity_test" "$build/tests/cuda_nccl_communicator_test"

# 5. The step benchmark, bf16 on one GPU: a Llama-3-8B-shaped model (hidden
# 4096, ffn 14336, 32 heads, 8 kv heads, vocab 128256) with fewer layers,
# random init, seq 4096, full fine-tuning then LoRA.
work=$build/bench_gpu
mkdir -p "$work"
layers=${GPU_CHECK_LAYERS:-8}
steps=${GPU_CHECK_STEPS:-12}
$python - "$work" "$layers" <<'PY'
import json, random, sys
work, layers = sys.argv[1], int(sys.argv[2])
config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": layers,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "hidden_act": "silu", "initializer_range": 0.02, "bos_token_id": 128000,
    "eos_token_id": 128001, "torch_dtype": "bfloat16"}
json.dump(config, open(f"{work}/config.json", "w"), indent=1)
rng = random.Random(0)
with open(f"{work}/data.jsonl", "w") as f:
    for _ in range(64):
        f.write(json.dumps({"input_ids": [rng.randrange(3, 128000) for _ in range(4096)]}) + "\n")
PY
for method in full lora; do
  rm -f "$work/$method.jsonl"
  # Device memory in use (the caching allocator's reserve included), sampled.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 \
    >"$work/$method.gpu_mem" 2>/dev/null &
  sampler=$!
  step "bench_$method" 110 "$build/fulcrum" train recipes/bench/gpu_step.yaml \
    model.config="$work/config.json" data.path="$work/data.jsonl" train.steps="$steps" \
    finetune.method=$method logging.metrics_file="$work/$method.jsonl"
  kill "$sampler" 2>/dev/null
  cp "$work/$method.jsonl" "$logs/$method.jsonl" 2>/dev/null
done
$python - "$work" <<'PY' | tee "$logs/bench_summary.txt"
import json, os, statistics, sys
work = sys.argv[1]
for method in ("full", "lora"):
    path = f"{work}/{method}.jsonl"
    if not os.path.exists(path):
        print(f"{method}: no metrics (the run failed)")
        continue
    rows = [r for r in map(json.loads, open(path)) if "tokens_per_second" in r][2:]
    if not rows:
        print(f"{method}: too few steps")
        continue
    tps = statistics.median(r["tokens_per_second"] for r in rows)
    flops = statistics.median(r["flops_per_second_per_rank"] for r in rows)
    peak = rows[0]["peak_flops_per_rank"]
    tensors = max(r.get("peak_device_bytes", 0) for r in rows) / 2**30
    try:
        used = max(int(l) for l in open(f"{work}/{method}.gpu_mem") if l.strip().isdigit())
        mem = f"peak {tensors:5.1f} GiB in tensors, {used / 1024:5.1f} GiB used on the device"
    except (OSError, ValueError):
        mem = f"peak {tensors:5.1f} GiB in tensors"
    print(f"{method:5s}: {tps:9.0f} tokens/s  {flops / 1e12:6.1f} TFLOP/s achieved  "
          f"measured bf16 GEMM peak {peak / 1e12:6.1f} TFLOP/s  MFU {flops / peak:5.1%}  "
          f"vs 989 TFLOP/s datasheet {flops / 989e12:5.1%}  {mem}  ({len(rows)} steps)")
print("goal: bf16 MFU >= 45% on one H200")
PY
exit $status
