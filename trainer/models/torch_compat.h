// The one place for LibTorch-version-specific calls. LibTorch 1.13 (Debian,
// CPU) has no fused scaled_dot_product_attention; 2.1+ has it with `scale`.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <optional>

namespace fulcrum::models::compat {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
inline constexpr bool kHasFusedAttention = true;
// q, k, v [B, H, T, D] (kv already repeated to H heads), additive mask
// [B, 1, T, T] -> [B, H, T, D]. An undefined mask means causal only: no mask
// tensor and is_causal, which the flash kernel takes (it takes no mask).
inline torch::Tensor FusedAttention(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v, const torch::Tensor& mask,
                                    double scale) {
  if (!mask.defined()) {
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                            /*is_causal=*/true, scale);
  }
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false,
                                          scale);
}
#else
inline constexpr bool kHasFusedAttention = false;
inline torch::Tensor FusedAttention(const torch::Tensor& q, const torch::Tensor&,
                                    const torch::Tensor&, const torch::Tensor&, double) {
  return q;  // never called: kHasFusedAttention is false
}
#endif

// Whether attention on `device` goes through FusedAttention: the one test
// the attention cores dispatch on and the mask builder relies on (it passes
// no mask for a causal-only batch only where the fused kernel runs).
inline bool RunsFusedAttention(const torch::Device& device) {
  return kHasFusedAttention && device.is_cuda();
}

}  // namespace fulcrum::models::compat
