// A rough check, before any tensor is allocated, that a layout can hold the
// model's training state: weights, gradients and AdamW moments (and fp32
// masters) per rank, with the routed experts divided by ep, the layers by pp
// and the optimizer state by ZeRO-1's group. Activations and buffers are left
// out: a layout refused here cannot fit; one accepted may still not (the
// planner refines it). Checked against the host memory on CPU runs.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "trainer/metrics/parameter_count.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

struct TrainingStateEstimate {
  double params_per_rank = 0;         // base parameters this rank holds
  double expert_params_per_rank = 0;  // of which routed experts
  double bytes_per_rank = 0;          // weights + gradients + optimizer state
};

TrainingStateEstimate EstimateTrainingState(const metrics::ParameterCounts& counts,
                                            const recipe::Recipe& recipe);

// An error naming the recipe and the parallel keys when the estimate exceeds
// `available_bytes_per_rank`.
absl::Status CheckTrainingStateFits(const TrainingStateEstimate& estimate,
                                    const metrics::ParameterCounts& counts,
                                    const recipe::Recipe& recipe, double available_bytes_per_rank);

// MemAvailable of /proc/meminfo in bytes (0 when unreadable).
double AvailableHostMemory();

}  // namespace fulcrum::loop
