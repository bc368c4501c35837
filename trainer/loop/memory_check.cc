#include "trainer/loop/memory_check.h"

#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "trainer/plan/memory_model.h"

// NOTE: Debian's CPU LibTorch ships c10/cuda headers without the generated
// cuda_cmake_macros.h: only a CUDA LibTorch has both (and the CUDA runtime).
#if __has_include(<c10/cuda/impl/cuda_cmake_macros.h>) && __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define FULCRUM_HAVE_CUDA_RUNTIME 1
#endif

namespace fulcrum::loop {

AvailableMemory AvailableMemoryPerRank(const recipe::TrainSection& train,
                                       const torch::Device& device, int local_ranks) {
  AvailableMemory out;
  if (train.memory_gib > 0) {
    out.bytes = train.memory_gib * 1024.0 * 1024.0 * 1024.0;
    out.from = "train.memory_gib";
    return out;
  }
  if (device.is_cuda()) {
#ifdef FULCRUM_HAVE_CUDA_RUNTIME
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(device.index()) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      out.bytes = static_cast<double>(free_bytes);
      out.from = absl::StrFormat("free memory of cuda:%d", device.index());
    }
#endif
    return out;
  }
  const int ranks = local_ranks > 0 ? local_ranks : 1;
  out.bytes = AvailableHostMemory() / static_cast<double>(ranks);
  out.from = absl::StrFormat("host MemAvailable / %d local rank(s)", ranks);
  return out;
}

absl::Status CheckLayoutFits(const models::ModelConfig& config, const recipe::Recipe& recipe,
                             const torch::Device& device, const AvailableMemory& available) {
  FULCRUM_ASSIGN_OR_RETURN(
      const plan::MemoryPlan memory,
      plan::PlanMemory(config, recipe, plan::MemoryOptionsFor(device.is_cuda() ? "cuda" : "cpu")));
  return plan::CheckMemoryFits(memory, config, recipe, available.bytes, available.from);
}

double AvailableHostMemory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024.0;
  }
  return 0.0;
}

}  // namespace fulcrum::loop
