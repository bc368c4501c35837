// Expert-parallel token dispatch (dropless): each ep rank holds
// num_experts / ep consecutive experts; tokens travel to the rank of each
// expert they chose and back. Dispatch runs in separate steps -
//   1. local permute by expert (PermuteByExpert: rows for ep rank r are then
//      one contiguous block, experts [r L, (r+1) L)),
//   2. exchange of counts (rows per local expert from every rank),
//   3. all_to_all of the rows with those split sizes (AllToAllRows: its
//      backward is the reverse exchange),
//   4. local sort of the received rows by local expert,
// and Combine is the mirror image (unsort, all_to_all back, weighted sum
// into the tokens). Dispatch returns a DispatchHandle that Combine consumes.
//
// Defines: DispatchHandle, Dispatched, TokenDispatcher.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "parallel/comm/communicator.h"
#include "parallel/expert/token_permutation.h"

namespace fulcrum::parallel::expert {

struct DispatchHandle {
  PermutedTokens local;              // step 1 (kept for the weighted combine)
  std::vector<int64_t> send_splits;  // [ep] rows this rank sends to each ep rank
  std::vector<int64_t> recv_splits;  // [ep] rows this rank receives from each
  // [ep * L] rows from rank r for local expert e at r * L + e (source-major,
  // the order of the received rows).
  std::vector<int64_t> recv_counts;
  // [R] int64: expert-major position -> row of the received (source-major)
  // block; undefined when ep is 1 (the orders coincide).
  torch::Tensor expert_major_rows;
};

struct Dispatched {
  // [R, hidden] rows for this rank's experts, expert-major: local expert 0's
  // rows first (from rank 0, 1, ...), then expert 1's, ...
  torch::Tensor expert_input;
  std::vector<int64_t> tokens_per_local_expert;  // [L], sums to R
  DispatchHandle handle;
};

// The ep group when tokens travel between ranks (size > 1), else nullptr.
// num_experts % ep == 0 (FULCRUM_CHECK: the recipe validation reports it).
Communicator* ExchangingExpertGroup(int64_t num_experts, Communicator* ep_group);

class TokenDispatcher {
 public:
  // ep_group: the expert-parallel group (nullptr or size 1: every expert is
  // local and no exchange happens). num_experts % ep == 0 (FULCRUM_CHECK:
  // the recipe validation reports it).
  TokenDispatcher(int64_t num_experts, Communicator* ep_group);

  int64_t num_local_experts() const { return num_local_; }
  // Global id of this rank's first expert.
  int64_t first_local_expert() const { return first_local_; }

  // hidden [N, hidden], expert_ids [N, k] global ids, weights [N, k].
  // Collective over the ep group (every rank calls it, same layer order).
  Dispatched Dispatch(const torch::Tensor& hidden, const torch::Tensor& expert_ids,
                      const torch::Tensor& weights) const;
  // expert_output [R, hidden] in Dispatched::expert_input's order -> [N,
  // hidden]: each token's weighted sum over its k experts. Collective.
  torch::Tensor Combine(const torch::Tensor& expert_output, const DispatchHandle& handle) const;

 private:
  int64_t num_experts_;
  Communicator* ep_;  // nullptr when ep is 1
  int64_t num_local_;
  int64_t first_local_;
};

}  // namespace fulcrum::parallel::expert
