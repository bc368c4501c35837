// Parameter counts from a model's config alone (no tensors allocated), for
// the memory model before a run (trainer/plan) and the planner: the routed
// experts apart from the rest, since expert parallelism divides only them,
// and per decoder layer by how tensor parallelism divides them.
#pragma once

#include <cstdint>

#include "trainer/models/model_config.h"

namespace fulcrum::metrics {

struct ParameterCounts {
  int64_t routed_experts = 0;  // every MoE layer's routed experts
  int64_t other = 0;           // embeddings, attention, dense MLPs, shared experts, routers, norms
  int64_t total() const { return routed_experts + other; }
};

// One decoder layer's parameters by how a layout divides them.
struct LayerParameterCounts {
  // Split over tp: attention projections by heads, dense and shared-expert
  // MLPs by width. NOTE: GQA kv projections replicated when kv heads < tp
  // are counted as split (a small error for few kv heads).
  int64_t tp_split = 0;
  // Whole on every tp rank: norms, routers, MLA's latent projections and norms.
  int64_t replicated = 0;
  int64_t routed_experts = 0;  // split over ep, then each expert over tp
  int64_t total() const { return tp_split + replicated + routed_experts; }
};

// Decoder layer `layer` as CausalLM builds it (no LoRA adapters).
LayerParameterCounts CountLayerParameters(const models::ModelConfig& config, int64_t layer);

// The embedding ([vocab, hidden], split over tp by vocab rows).
int64_t EmbeddingParameters(const models::ModelConfig& config);

// The base model's parameters as CausalLM builds them (no LoRA adapters, no
// multi-token-prediction layers; the correction-bias buffers are not
// parameters): the layers, the embedding, lm_head unless tied, the final norm.
ParameterCounts CountParameters(const models::ModelConfig& config);

}  // namespace fulcrum::metrics
