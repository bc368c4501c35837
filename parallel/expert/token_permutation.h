// The local half of MoE token dispatch: (token, choice) pairs sorted by
// expert so that each expert's tokens are one contiguous slice of rows (the
// grouped GEMM runs one matmul per slice), and the mirror image that brings
// expert outputs back to their tokens, weighted and summed over the top-k.
// The expert-parallel dispatcher (all-to-all between ep ranks) wraps these.
//
// Defines: PermutedTokens, PermuteByExpert, UnpermuteAndCombine.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace fulcrum::parallel::expert {

struct PermutedTokens {
  // [M, hidden], M = N * k - dropped rows: row j is hidden[source_rows[j]], rows of
  // expert 0 first, then expert 1, ...; within an expert in (token, choice)
  // order (a stable sort, so the result does not depend on the sort kernel).
  // Differentiable with respect to the input hidden states.
  torch::Tensor tokens;
  torch::Tensor source_rows;  // [M] int64: the token (row of hidden) of each row
  torch::Tensor weights;      // [M]: the routing weight of each row (differentiable)
  // Rows per expert, on the host (the expert loop slices with them):
  // sum = M; size = num_experts; experts without a token have 0.
  std::vector<int64_t> tokens_per_expert;
  int64_t num_tokens = 0;  // N
  int64_t dropped = 0;     // (token, choice) pairs with expert id -1
};

// hidden [N, hidden], expert_ids [N, k] int64 in [0, num_experts), or -1 for
// a choice dropped over an expert's capacity (it gets no row and adds
// nothing to its token), weights [N, k] (any float dtype; cast to hidden's
// dtype) -> the permutation above.
PermutedTokens PermuteByExpert(const torch::Tensor& hidden, const torch::Tensor& expert_ids,
                               const torch::Tensor& weights, int64_t num_experts);

// expert_out [M, hidden] (rows in PermutedTokens order) -> [N, hidden]: row t
// = sum over t's rows j of weights[j] * expert_out[j]. Differentiable with
// respect to expert_out and the weights.
torch::Tensor UnpermuteAndCombine(const torch::Tensor& expert_out, const PermutedTokens& permuted);

}  // namespace fulcrum::parallel::expert
