// Global gradient-norm clipping.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace fulcrum::optim {

// Global L2 norm over the grads of `params` (each accumulated in fp32;
// undefined grads skipped), then grads *= min(1, max_norm / (norm + 1e-6))
// (torch.nn.utils.clip_grad_norm_ semantics; max_norm <= 0: no clipping).
// Returns the norm before clipping as a 0-dim fp32 tensor on the grads'
// device (CPU when there is no grad).
// NOTE: no host sync: the clip factor stays a device tensor.
torch::Tensor ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace fulcrum::optim
