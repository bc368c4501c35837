#include "trainer/models/expert_capacity.h"

#include <cmath>

#include "core/check.h"

namespace fulcrum::models {

int64_t ExpertCapacity(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                       double capacity_factor) {
  FULCRUM_CHECK(capacity_factor > 0 && num_experts > 0, "capacity_factor=", capacity_factor,
                " num_experts=", num_experts);
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(num_tokens * top_k) /
                                        static_cast<double>(num_experts)));
}

torch::Tensor DropOverCapacity(const torch::Tensor& expert_ids, int64_t num_experts,
                               int64_t capacity) {
  FULCRUM_CHECK(expert_ids.dim() == 2, "expert_ids must be [N, k]");
  torch::NoGradGuard no_grad;
  const int64_t n = expert_ids.size(0), m = expert_ids.numel();
  // Choice-major: every token's first choice, then every second choice, ...
  // (GShard's priority), tokens in order within a rank of choice.
  const torch::Tensor ids = expert_ids.t().reshape({m});  // [k * N], position c * N + t
  // Sorting the unique key id * M + position groups by expert in that order.
  const torch::Tensor positions = torch::arange(m, ids.options());
  const torch::Tensor order = torch::argsort(ids * m + positions);
  const torch::Tensor sorted_ids = ids.index_select(0, order);
  // Rank of each sorted choice within its expert: position - expert's start.
  const torch::Tensor counts = torch::bincount(ids, /*weights=*/{}, num_experts);
  const torch::Tensor starts = counts.cumsum(0) - counts;
  const torch::Tensor rank = positions - starts.index_select(0, sorted_ids);
  torch::Tensor dropped = torch::zeros({m}, torch::kBool);
  dropped.index_put_({order}, rank >= capacity);
  const torch::Tensor kept = torch::where(dropped, torch::full_like(ids, -1), ids);
  return kept.view({expert_ids.size(1), n}).t().contiguous();
}

}  // namespace fulcrum::models
