// Summing gradients that each tp rank holds only a part of.
//
// Some replicated parameters get a different, partial gradient on every rank
// of the tp group, and the true gradient is their sum:
//   - norm weights (and a row-parallel bias) under sequence parallelism: each
//     rank saw only its sequence shard;
//   - LoRA A of a column-parallel linear: each rank back-propagates only its
//     output shard through B;
//   - kv-head projections replicated because tp > n_kv_heads.
// Call after backward, before clipping and the optimizer step.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel::tensor {

// Sums `grads` over `group` in place with ONE all-reduce of a flat buffer
// (fp32, or fp64 when any gradient is fp64; each gradient is cast back to its
// own dtype). Undefined tensors are skipped; every rank must pass the same
// list (same shapes and order). Identity for a group of one rank.
void AllReducePartialGradients(const std::vector<torch::Tensor>& grads, Communicator& group);

}  // namespace fulcrum::parallel::tensor
