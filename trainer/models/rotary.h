// Rotary position embedding (RoPE), HF's non-interleaved rotate_half layout,
// with the llama3, linear and yarn scalings of the inverse frequencies (HF
// transformers 4.57 modeling_rope_utils).
#pragma once

#include <torch/torch.h>

#include "trainer/models/model_config.h"

namespace fulcrum::models {

// inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim/2, fp32 on the CPU,
// then scaled per `scaling` (llama3: by wavelength band; linear: / factor;
// yarn: HF _compute_yarn_parameters, a ramp between theta^(2i/d) and
// factor * theta^(2i/d) over the dims whose rotation count at the original
// context lies in [beta_slow, beta_fast]).
// max_position_embeddings (config.json's) is read by yarn only: with
// rope_scaling.original_max_position_embeddings set, HF uses
// max_position_embeddings / original as the factor; without, the correction
// range is computed at max_position_embeddings. FULCRUM_CHECK that it is > 0
// under yarn.
torch::Tensor RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& scaling,
                          int64_t max_position_embeddings = 0);

// HF's attention_factor (the post-processing scale of cos and sin): 1.0
// without yarn; under yarn the explicit "attention_factor", else
// get_mscale(f, mscale) / get_mscale(f, mscale_all_dim) when both are set,
// else get_mscale(f), where get_mscale(f, m) = 0.1 m ln(f) + 1 (1 for f <= 1)
// and f is the factor RopeInvFreq uses (see max_position_embeddings there).
double RopeAttentionFactor(const RopeScaling& scaling, int64_t max_position_embeddings = 0);

// DeepSeek's yarn_get_mscale(scale, mscale): 0.1 * mscale * ln(scale) + 1,
// 1.0 for scale <= 1.
double YarnGetMscale(double scale, double mscale = 1.0);

struct RopeCosSin {
  torch::Tensor cos;  // [B, 1, T, head_dim] in the activation dtype
  torch::Tensor sin;  // [B, 1, T, head_dim]
};
// inv_freq [head_dim/2] fp32, position_ids [B, T] int64 -> cos/sin computed in
// fp32, multiplied by `attention_factor` (RopeAttentionFactor; HF scales both
// tables, so q.k carries its square), then cast to `dtype`.
RopeCosSin ComputeRopeCosSin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                             torch::ScalarType dtype, double attention_factor = 1.0);

// x [B, H, T, head_dim] -> x * cos + rotate_half(x) * sin.
torch::Tensor ApplyRope(const torch::Tensor& x, const RopeCosSin& rope);

}  // namespace fulcrum::models
