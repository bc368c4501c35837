#include "parallel/expert/token_dispatcher.h"

#include <numeric>

#include "core/check.h"
#include "parallel/expert/all_to_all.h"

namespace fulcrum::parallel::expert {
namespace {

// Sums of consecutive blocks of `block` entries: [a b c d], 2 -> [a+b c+d].
std::vector<int64_t> BlockSums(const std::vector<int64_t>& counts, int64_t block) {
  std::vector<int64_t> sums(counts.size() / static_cast<size_t>(block), 0);
  for (size_t i = 0; i < counts.size(); ++i) sums[i / static_cast<size_t>(block)] += counts[i];
  return sums;
}

}  // namespace

Communicator* ExchangingExpertGroup(int64_t num_experts, Communicator* ep_group) {
  const int64_t ep = ep_group != nullptr ? ep_group->size() : 1;
  FULCRUM_CHECK(num_experts > 0 && num_experts % ep == 0, num_experts,
                " experts do not divide over ", ep, " expert-parallel ranks");
  return ep > 1 ? ep_group : nullptr;
}

TokenDispatcher::TokenDispatcher(int64_t num_experts, Communicator* ep_group)
    : num_experts_(num_experts), ep_(ExchangingExpertGroup(num_experts, ep_group)) {
  num_local_ = ep_ != nullptr ? num_experts / ep_->size() : num_experts;
  first_local_ = ep_ != nullptr ? ep_->rank() * num_local_ : 0;
}

Dispatched TokenDispatcher::Dispatch(const torch::Tensor& hidden, const torch::Tensor& expert_ids,
                                     const torch::Tensor& weights) const {
  PermutedTokens local = PermuteByExpert(hidden, expert_ids, weights, num_experts_);
  if (ep_ == nullptr) {
    const int64_t rows = local.tokens.size(0);
    DispatchHandle handle{local, {rows}, {rows}, local.tokens_per_expert, torch::Tensor()};
    return Dispatched{local.tokens, local.tokens_per_expert, std::move(handle)};
  }
  const int64_t ep = ep_->size(), experts = num_local_;
  // 2. Rows per (destination rank, its local expert) out; per (source rank,
  // my local expert) in. Global expert ids are rank-major, so the send
  // counts are tokens_per_expert as is.
  const torch::Tensor send_counts =
      torch::tensor(local.tokens_per_expert, torch::kLong).to(hidden.device());
  torch::Tensor recv_counts_t = torch::empty_like(send_counts);
  ep_->AllToAll(send_counts, recv_counts_t);
  recv_counts_t = recv_counts_t.cpu();
  const int64_t* recv_ptr = recv_counts_t.data_ptr<int64_t>();
  DispatchHandle handle;
  handle.recv_counts.assign(recv_ptr, recv_ptr + ep * experts);
  handle.send_splits = BlockSums(local.tokens_per_expert, experts);
  handle.recv_splits = BlockSums(handle.recv_counts, experts);
  // 3. The rows themselves.
  const torch::Tensor received =
      AllToAllRows(local.tokens, handle.recv_splits, handle.send_splits, *ep_);
  // 4. Source-major (rank, expert) blocks -> expert-major.
  std::vector<int64_t> block_start(static_cast<size_t>(ep * experts), 0);
  std::partial_sum(handle.recv_counts.begin(), handle.recv_counts.end() - 1,
                   block_start.begin() + 1);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(received.size(0)));
  std::vector<int64_t> per_expert(static_cast<size_t>(experts), 0);
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t r = 0; r < ep; ++r) {
      const size_t block = static_cast<size_t>(r * experts + e);
      for (int64_t i = 0; i < handle.recv_counts[block]; ++i)
        order.push_back(block_start[block] + i);
      per_expert[static_cast<size_t>(e)] += handle.recv_counts[block];
    }
  }
  handle.expert_major_rows = torch::tensor(order, torch::kLong).to(hidden.device());
  torch::Tensor expert_input = received.index_select(0, handle.expert_major_rows);
  handle.local = std::move(local);
  return Dispatched{std::move(expert_input), std::move(per_expert), std::move(handle)};
}

torch::Tensor TokenDispatcher::Combine(const torch::Tensor& expert_output,
                                       const DispatchHandle& handle) const {
  if (ep_ == nullptr) return UnpermuteAndCombine(expert_output, handle.local);
  const torch::Tensor& rows = handle.expert_major_rows;  // expert-major -> source-major row
  FULCRUM_CHECK(expert_output.size(0) == rows.size(0), "combine got ", expert_output.size(0),
                " rows, dispatch sent ", rows.size(0));
  // The inverse permutation: source-major row -> its expert-major position.
  torch::Tensor inverse = torch::empty_like(rows);
  inverse.index_put_({rows}, torch::arange(rows.size(0), rows.options()));
  const torch::Tensor source_major = expert_output.index_select(0, inverse);
  const torch::Tensor returned =
      AllToAllRows(source_major, handle.send_splits, handle.recv_splits, *ep_);
  return UnpermuteAndCombine(returned, handle.local);
}

}  // namespace fulcrum::parallel::expert
