#include "parallel/expert/token_permutation.h"

#include "core/check.h"

namespace fulcrum::parallel::expert {

PermutedTokens PermuteByExpert(const torch::Tensor& hidden, const torch::Tensor& expert_ids,
                               const torch::Tensor& weights, int64_t num_experts) {
  FULCRUM_CHECK(hidden.dim() == 2, "hidden must be [N, hidden], got ", hidden.dim(), " dims");
  FULCRUM_CHECK(expert_ids.dim() == 2 && expert_ids.size(0) == hidden.size(0),
                "expert_ids must be [N, k] with N = ", hidden.size(0));
  FULCRUM_CHECK(weights.sizes() == expert_ids.sizes(),
                "weights must have expert_ids' shape [N, k]");
  FULCRUM_CHECK(expert_ids.scalar_type() == torch::kInt64, "expert_ids must be int64");
  FULCRUM_CHECK(num_experts > 0, "num_experts=", num_experts);

  const int64_t n = hidden.size(0);
  const int64_t k = expert_ids.size(1);
  const int64_t m = n * k;
  // Flattened (token, choice) pairs: pair p = t * k + c. Sorting the unique key
  // id * M + p is a stable sort by expert with any sort kernel (LibTorch 1.13
  // and 2.x alike), so rows within an expert stay in (token, choice) order.
  const torch::Tensor flat_ids = expert_ids.reshape({m});  // [N * k]
  const torch::Tensor positions = torch::arange(m, flat_ids.options());
  // One host copy: the expert loop slices rows with these counts. Bin 0
  // counts the dropped choices (id -1).
  const torch::Tensor counts =
      torch::bincount(flat_ids + 1, /*weights=*/{}, num_experts + 1).to(torch::kCPU).contiguous();
  FULCRUM_CHECK(counts.size(0) == num_experts + 1, "an expert id is >= num_experts (", num_experts,
                "): bincount has ", counts.size(0) - 1, " expert bins");
  const int64_t* data = counts.data_ptr<int64_t>();
  // Dropped choices sort first (negative keys) and are cut off.
  const int64_t dropped = data[0];
  const torch::Tensor order =
      torch::argsort(flat_ids * m + positions).narrow(0, dropped, m - dropped);  // [M]

  PermutedTokens out;
  out.num_tokens = n;
  out.dropped = dropped;
  out.tokens_per_expert.assign(data + 1, data + 1 + num_experts);
  // Pair p belongs to token p / k.
  out.source_rows = order.div(k, /*rounding_mode=*/"floor");
  out.tokens = hidden.index_select(0, out.source_rows);
  out.weights = weights.reshape({m}).to(hidden.scalar_type()).index_select(0, order);
  return out;
}

torch::Tensor UnpermuteAndCombine(const torch::Tensor& expert_out, const PermutedTokens& permuted) {
  FULCRUM_CHECK(expert_out.dim() == 2 && expert_out.size(0) == permuted.source_rows.size(0),
                "expert_out must be [M, hidden] with M = ", permuted.source_rows.size(0));
  // [M, hidden] weighted rows, summed into their tokens (out of place so that
  // autograd reaches expert_out and the weights).
  const torch::Tensor weighted = expert_out * permuted.weights.unsqueeze(-1);
  const torch::Tensor zeros =
      torch::zeros({permuted.num_tokens, expert_out.size(1)}, weighted.options());
  return zeros.index_add(0, permuted.source_rows, weighted);
}

}  // namespace fulcrum::parallel::expert
