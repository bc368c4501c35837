// Capacity-padded expert dispatch (Megatron's moe_pad_expert_input_to_capacity):
// every expert has exactly `capacity` slots on every source rank, filled by
// the choices a capacity kept and padded with zero rows. Every size is then
// known before the step - the all_to_all splits are equal, each expert's
// block of rows has a fixed size - so nothing is read back to the host: no
// count exchange, no per-layer synchronisation on a GPU. The price is the
// padding rows the experts multiply (capacity_factor x N x k rows in all).
//
// The slots come from the model (models::CapacitySlots: the same priority as
// the dropless path's capacity, so both drop the same choices).
//
// Defines: PaddedDispatch, PaddedTokenDispatcher.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel::expert {

struct PaddedDispatch {
  // [L, ep * capacity, hidden]: local expert e's rows, from source rank 0's
  // slots, then rank 1's, ...; an empty slot is a zero row.
  torch::Tensor expert_input;
  torch::Tensor slot_tokens;   // [E * capacity] int64: token of each local slot; N when empty
  torch::Tensor slot_weights;  // [E * capacity]: its routing weight (0 when empty), differentiable
  int64_t num_tokens = 0;      // N
};

class PaddedTokenDispatcher {
 public:
  // ep_group: the expert-parallel group (nullptr or size 1: no exchange).
  // num_experts % ep == 0 (FULCRUM_CHECK).
  PaddedTokenDispatcher(int64_t num_experts, Communicator* ep_group);

  int64_t num_local_experts() const { return num_local_; }

  // hidden [N, hidden]; slots [N, k] int64 in [0, E * capacity], E *
  // capacity for a dropped choice; weights [N, k] (cast to hidden's dtype).
  // Collective over the ep group; every ep rank passes the same capacity
  // (the trainer's micro-batches are all [micro_batch, seq_len]).
  // Differentiable with respect to hidden and the weights.
  PaddedDispatch Dispatch(const torch::Tensor& hidden, const torch::Tensor& slots,
                          const torch::Tensor& weights, int64_t capacity) const;
  // expert_output [L, ep * capacity, hidden] in expert_input's order -> [N,
  // hidden]: each token's weighted sum over its kept choices. Collective.
  torch::Tensor Combine(const torch::Tensor& expert_output, const PaddedDispatch& dispatch) const;

 private:
  int64_t num_experts_;
  Communicator* ep_;  // nullptr when ep is 1
  int64_t num_local_;
};

}  // namespace fulcrum::parallel::expert
