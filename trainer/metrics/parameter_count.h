// Parameter counts from a model's config alone (no tensors allocated), for
// the memory check before a run and the planner: the routed experts apart
// from the rest, since expert parallelism divides only them.
#pragma once

#include <cstdint>

#include "trainer/models/model_config.h"

namespace fulcrum::metrics {

struct ParameterCounts {
  int64_t routed_experts = 0;  // every MoE layer's routed experts
  int64_t other = 0;           // embeddings, attention, dense MLPs, shared experts, routers, norms
  int64_t total() const { return routed_experts + other; }
};

// The base model's parameters as CausalLM builds them (no LoRA adapters, no
// multi-token-prediction layers; the correction-bias buffers are not
// parameters).
ParameterCounts CountParameters(const models::ModelConfig& config);

}  // namespace fulcrum::metrics
