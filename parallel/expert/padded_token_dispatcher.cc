#include "parallel/expert/padded_token_dispatcher.h"

#include <vector>

#include "core/check.h"
#include "parallel/expert/all_to_all.h"
#include "parallel/expert/token_dispatcher.h"

namespace fulcrum::parallel::expert {

PaddedTokenDispatcher::PaddedTokenDispatcher(int64_t num_experts, Communicator* ep_group)
    : num_experts_(num_experts), ep_(ExchangingExpertGroup(num_experts, ep_group)) {
  num_local_ = ep_ != nullptr ? num_experts / ep_->size() : num_experts;
}

PaddedDispatch PaddedTokenDispatcher::Dispatch(const torch::Tensor& hidden,
                                               const torch::Tensor& slots,
                                               const torch::Tensor& weights,
                                               int64_t capacity) const {
  FULCRUM_CHECK(hidden.dim() == 2, "hidden must be [N, hidden], got ", hidden.dim(), " dims");
  FULCRUM_CHECK(
      slots.dim() == 2 && slots.size(0) == hidden.size(0) && slots.scalar_type() == torch::kInt64,
      "slots must be int64 [N, k] with N = ", hidden.size(0));
  FULCRUM_CHECK(weights.sizes() == slots.sizes(), "weights must have the slots' shape [N, k]");
  FULCRUM_CHECK(capacity > 0, "capacity=", capacity);
  const int64_t n = hidden.size(0), k = slots.size(1), width = hidden.size(1);
  const int64_t total = num_experts_ * capacity;
  // One extra slot (index `total`) takes every dropped choice and is cut off.
  const torch::Tensor flat_slots = slots.reshape({n * k});
  const torch::Tensor choice_tokens =
      torch::arange(n, slots.options()).unsqueeze(1).expand({n, k}).reshape({n * k});
  PaddedDispatch out;
  out.num_tokens = n;
  out.slot_tokens = torch::full({total + 1}, n, slots.options())
                        .scatter_(0, flat_slots, choice_tokens)
                        .narrow(0, 0, total);
  out.slot_weights = torch::zeros({total + 1}, weights.options().dtype(hidden.scalar_type()))
                         .scatter(0, flat_slots, weights.reshape({n * k}).to(hidden.scalar_type()))
                         .narrow(0, 0, total);
  // Row n of the padded tokens is the zero row of the empty slots.
  const torch::Tensor padded = torch::constant_pad_nd(hidden, {0, 0, 0, 1});
  const torch::Tensor rows = padded.index_select(0, out.slot_tokens);  // [E * C, hidden]
  if (ep_ == nullptr) {
    out.expert_input = rows.view({num_experts_, capacity, width});
    return out;
  }
  // Experts are rank-major: rank r's block of L * C rows goes to rank r.
  const int64_t ep = ep_->size();
  const std::vector<int64_t> splits(static_cast<size_t>(ep), num_local_ * capacity);
  const torch::Tensor received = AllToAllRows(rows, splits, splits, *ep_);
  // [source, L, C, hidden] -> [L, source, C, hidden]: expert-major.
  out.expert_input = received.view({ep, num_local_, capacity, width})
                         .transpose(0, 1)
                         .reshape({num_local_, ep * capacity, width});
  return out;
}

torch::Tensor PaddedTokenDispatcher::Combine(const torch::Tensor& expert_output,
                                             const PaddedDispatch& dispatch) const {
  const int64_t width = expert_output.size(-1);
  const int64_t total = dispatch.slot_tokens.size(0);
  FULCRUM_CHECK(expert_output.dim() == 3 && expert_output.size(0) == num_local_ &&
                    expert_output.numel() == total * width,
                "combine got ", expert_output.dim(), " dims of ", expert_output.numel(),
                " elements for ", num_local_, " local experts and ", total, " slots");
  torch::Tensor rows = expert_output.reshape({total, width});
  if (ep_ != nullptr) {
    const int64_t ep = ep_->size(), capacity = total / num_experts_;
    const std::vector<int64_t> splits(static_cast<size_t>(ep), num_local_ * capacity);
    const torch::Tensor source_major = expert_output.view({num_local_, ep, capacity, width})
                                           .transpose(0, 1)
                                           .reshape({total, width});
    rows = AllToAllRows(source_major, splits, splits, *ep_);
  }
  // Empty slots add their (zero-weighted) row to the extra token n, cut off.
  const torch::Tensor weighted = rows * dispatch.slot_weights.unsqueeze(-1);
  return torch::zeros({dispatch.num_tokens + 1, width}, weighted.options())
      .index_add(0, dispatch.slot_tokens, weighted)
      .narrow(0, 0, dispatch.num_tokens);
}

}  // namespace fulcrum::parallel::expert
