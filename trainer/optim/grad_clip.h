// Global gradient-norm clipping.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/comm/communicator.h"

namespace fulcrum::optim {

// Global L2 norm over the grads of `params` (each accumulated in fp32;
// undefined grads skipped), then grads *= min(1, max_norm / (norm + 1e-6))
// (torch.nn.utils.clip_grad_norm_ semantics; max_norm <= 0: no clipping).
// Returns the norm before clipping as a 0-dim fp32 tensor on the grads'
// device (CPU when there is no grad).
// NOTE: no host sync: the clip factor stays a device tensor.
torch::Tensor ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

// The global norm over ranks: norm^2 = the sum of squares of `counted`
// (gradient tensors, accumulated in fp32; undefined ones skipped), summed
// over every communicator in `sum_over` in turn. Returns the norm as a 0-dim
// fp32 tensor. The caller decides what counts where, so that each element
// counts exactly once over the ranks: tp-replicated params only on tp rank
// 0, ZeRO-1 chunks on their owner. The gradients are not scaled: the
// optimizer applies ClipCoefficient as it reads them (Optimizer::Step).
// NOTE: collective over each communicator in sum_over (every rank calls it).
torch::Tensor GlobalGradNorm(const std::vector<torch::Tensor>& counted,
                             const std::vector<parallel::Communicator*>& sum_over);

// min(1, max_norm / (norm + 1e-6)) in fp32, the factor ClipGradNorm scales
// by, bit for bit (max_norm <= 0: 1; a non-finite norm gives NaN or 0).
float ClipCoefficient(float norm, double max_norm);

}  // namespace fulcrum::optim
