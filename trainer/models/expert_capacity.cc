#include "trainer/models/expert_capacity.h"

#include <cmath>

#include "core/check.h"

namespace fulcrum::models {
namespace {

// expert_ids [N, k] -> [N, k]: each choice's rank among its expert's choices
// in GShard's priority. Computed on the ids' device, without a host read.
torch::Tensor RankWithinExpert(const torch::Tensor& expert_ids, int64_t num_experts) {
  FULCRUM_CHECK(expert_ids.dim() == 2, "expert_ids must be [N, k]");
  const int64_t n = expert_ids.size(0), m = expert_ids.numel();
  // Choice-major: every token's first choice, then every second choice, ...
  // (GShard's priority), tokens in order within a rank of choice.
  const torch::Tensor ids = expert_ids.t().reshape({m});  // [k * N], position c * N + t
  // Sorting the unique key id * M + position groups by expert in that order.
  const torch::Tensor positions = torch::arange(m, ids.options());
  const torch::Tensor order = torch::argsort(ids * m + positions);
  const torch::Tensor sorted_ids = ids.index_select(0, order);
  // Rank of each sorted choice within its expert: position - expert's start.
  // (scatter_add, not bincount: CUDA's bincount reads the maximum id back.)
  const torch::Tensor counts =
      torch::zeros({num_experts}, ids.options()).scatter_add_(0, ids, torch::ones_like(ids));
  const torch::Tensor starts = counts.cumsum(0) - counts;
  const torch::Tensor rank =
      torch::empty_like(ids).scatter_(0, order, positions - starts.index_select(0, sorted_ids));
  return rank.view({expert_ids.size(1), n}).t();
}

}  // namespace

int64_t ExpertCapacity(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                       double capacity_factor) {
  FULCRUM_CHECK(capacity_factor > 0 && num_experts > 0, "capacity_factor=", capacity_factor,
                " num_experts=", num_experts);
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(num_tokens * top_k) /
                                        static_cast<double>(num_experts)));
}

torch::Tensor DropOverCapacity(const torch::Tensor& expert_ids, int64_t num_experts,
                               int64_t capacity) {
  torch::NoGradGuard no_grad;
  const torch::Tensor rank = RankWithinExpert(expert_ids, num_experts);
  return torch::where(rank >= capacity, torch::full_like(expert_ids, -1), expert_ids).contiguous();
}

torch::Tensor CapacitySlots(const torch::Tensor& expert_ids, int64_t num_experts,
                            int64_t capacity) {
  torch::NoGradGuard no_grad;
  const torch::Tensor rank = RankWithinExpert(expert_ids, num_experts);
  return torch::where(rank >= capacity, torch::full_like(expert_ids, num_experts * capacity),
                      expert_ids * capacity + rank)
      .contiguous();
}

}  // namespace fulcrum::models
