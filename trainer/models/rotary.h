// Rotary position embedding (RoPE), HF's non-interleaved rotate_half layout,
// with the llama3 and linear scalings of the inverse frequencies.
#pragma once

#include <torch/torch.h>

#include "trainer/models/model_config.h"

namespace fulcrum::models {

// inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim/2, fp32 on the CPU,
// then scaled per `scaling` (llama3: by wavelength band; linear: / factor).
torch::Tensor RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& scaling);

struct RopeCosSin {
  torch::Tensor cos;  // [B, 1, T, head_dim] in the activation dtype
  torch::Tensor sin;  // [B, 1, T, head_dim]
};
// inv_freq [head_dim/2] fp32, position_ids [B, T] int64 -> cos/sin computed in
// fp32 then cast to `dtype`.
RopeCosSin ComputeRopeCosSin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                             torch::ScalarType dtype);

// x [B, H, T, head_dim] -> x * cos + rotate_half(x) * sin.
torch::Tensor ApplyRope(const torch::Tensor& x, const RopeCosSin& rope);

}  // namespace fulcrum::models
