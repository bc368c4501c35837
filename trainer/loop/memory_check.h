// The memory check of `fulcrum train`, before any tensor is allocated: every
// rank's peak predicted by the planner's memory model (plan/memory_model.h,
// the same numbers `fulcrum plan` prints) against the memory each rank may
// use; a layout that cannot fit is refused, naming the recipe, the parallel
// keys and the predicted and available bytes.
#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/status.h"
#include "trainer/models/model_config.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

struct AvailableMemory {
  double bytes = 0;  // per rank; 0 = unknown (no check)
  std::string from;  // where the number comes from, for the message
};

// train.memory_gib when set; else on the CPU the host's MemAvailable shared
// by the node's `local_ranks`, on CUDA the device's free memory (0 when this
// LibTorch has no CUDA runtime).
AvailableMemory AvailableMemoryPerRank(const recipe::TrainSection& train,
                                       const torch::Device& device, int local_ranks);

// The memory model's peak (with the runtime of `device`'s process) against
// `available`; errors name the recipe and the parallel keys.
absl::Status CheckLayoutFits(const models::ModelConfig& config, const recipe::Recipe& recipe,
                             const torch::Device& device, const AvailableMemory& available);

// MemAvailable of /proc/meminfo in bytes (0 when unreadable).
double AvailableHostMemory();

}  // namespace fulcrum::loop
