#include "trainer/models/rotary.h"

#include <cmath>

#include "core/check.h"

namespace fulcrum::models {
namespace {

// HF _compute_llama3_parameters: low frequencies (long wavelengths) are divided
// by `factor`, high ones kept, the band between interpolated smoothly.
torch::Tensor Llama3Scale(const torch::Tensor& inv_freq, const RopeScaling& s) {
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  const torch::Tensor smooth =
      (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  const torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  const torch::Tensor is_medium =
      (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(is_medium, smoothed, scaled);
}

}  // namespace

torch::Tensor RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& scaling) {
  FULCRUM_CHECK(head_dim % 2 == 0, "head_dim=", head_dim);
  // As HF: exponent in fp32, theta ** exponent in fp32, then 1 / that.
  const torch::Tensor exponent =
      torch::arange(0, head_dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(head_dim);
  torch::Tensor inv_freq = 1.0 / torch::pow(theta, exponent);
  if (scaling.type == "llama3") return Llama3Scale(inv_freq, scaling);
  if (scaling.type == "linear") return inv_freq / scaling.factor;
  FULCRUM_CHECK(scaling.type.empty(), "unvalidated rope type ", scaling.type);
  return inv_freq;
}

RopeCosSin ComputeRopeCosSin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                             torch::ScalarType dtype) {
  // [B, T, 1] * [head_dim/2] -> [B, T, head_dim/2]; fp32 even under bf16.
  const torch::Tensor freqs = position_ids.to(torch::kFloat).unsqueeze(-1) *
                              inv_freq.to(position_ids.device(), torch::kFloat);
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);  // [B, 1, T, head_dim]
  return RopeCosSin{emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor ApplyRope(const torch::Tensor& x, const RopeCosSin& rope) {
  const int64_t half = x.size(-1) / 2;
  const torch::Tensor x1 = x.narrow(-1, 0, half);
  const torch::Tensor x2 = x.narrow(-1, half, half);
  const torch::Tensor rotated = torch::cat({-x2, x1}, -1);
  return x * rope.cos + rotated * rope.sin;
}

}  // namespace fulcrum::models
