// Optional expert capacity (GShard / Switch Transformer, Megatron's
// moe_expert_capacity_factor): each expert takes at most
// ceil(capacity_factor * N * k / E) of a forward's N tokens' k choices; the
// choices over it are dropped (the token keeps its other experts and the
// residual). Dropless is the default (capacity_factor 0).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace fulcrum::models {

// ceil(capacity_factor * num_tokens * top_k / num_experts); capacity_factor > 0.
int64_t ExpertCapacity(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                       double capacity_factor);

// expert_ids [N, k] int64 -> expert_ids with every expert's choices beyond
// `capacity` set to -1 (dropped). An expert takes every token's first choice
// before any second choice (GShard's priority), earlier tokens first within
// a rank of choice. The priority depends only on the choices, never on
// weights that rounding could reorder, so every layout drops the same.
// Deterministic; no autograd.
torch::Tensor DropOverCapacity(const torch::Tensor& expert_ids, int64_t num_experts,
                               int64_t capacity);

// The same priority as slots of a padded dispatch: expert_ids [N, k] ->
// [N, k] int64, choice (t, c) of expert e with rank i < capacity among e's
// choices -> slot e * capacity + i; a dropped choice -> num_experts *
// capacity (one past the last slot). Computed on the ids' device without a
// host read. Deterministic; no autograd.
torch::Tensor CapacitySlots(const torch::Tensor& expert_ids, int64_t num_experts, int64_t capacity);

}  // namespace fulcrum::models
