// Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank
// bottleneck (q_a -> RMSNorm -> q_b, or a plain q_proj), keys and values
// decompressed from a shared latent (kv_a_proj_with_mqa -> RMSNorm ->
// kv_b_proj), a decoupled RoPE key of qk_rope_head_dim shared by all heads,
// RoPE on interleaved pairs (as DeepSeek's checkpoints expect), softmax scale
// 1/sqrt(qk_head_dim) times YaRN's mscale^2 when rope_scaling asks for it.
#pragma once

#include <torch/torch.h>

#include "trainer/generate/kv_cache.h"
#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/rms_norm.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {

// The softmax scale of `config`'s MLA: qk_head_dim^-0.5, times
// yarn_get_mscale(factor, mscale_all_dim)^2 under yarn rope scaling with
// mscale_all_dim set.
double MlaSoftmaxScale(const ModelConfig& config);

// x [B, H, T, D] with D even -> RoPE on the pairs (x[2i], x[2i+1]) using the
// rotate_half-layout tables of ComputeRopeCosSin (rope.cos[..., i] is the
// angle of pair i for i < D/2).
torch::Tensor ApplyInterleavedRope(const torch::Tensor& x, const RopeCosSin& rope);

class MlaAttentionImpl : public torch::nn::Module {
 public:
  // Under tp this rank holds H/tp heads: q (or q_b) and kv_b column-parallel
  // by heads, o row-parallel, the latent projections and norms replicated.
  MlaAttentionImpl(const ModelConfig& config, const torch::TensorOptions& options,
                   const ModelParallel& parallel = {});
  // x [B, T, hidden], rope cos/sin [B, 1, T, qk_rope_head_dim], mask [B, 1,
  // T, T] additive -> [B, T, hidden]. Under sp x and the result are [B, T/tp,
  // hidden]; rope and mask cover the full T.
  torch::Tensor forward(const torch::Tensor& x, const RopeCosSin& rope, const torch::Tensor& mask);
  // Incremental decoding (see AttentionImpl::ForwardCached): caches the
  // decompressed keys [B, H, S, qk_head_dim] and values [B, H, S, v_head_dim]
  // (the cache is built with KvCacheShape::value_head_dim).
  torch::Tensor ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                              const torch::Tensor& mask, generate::KvCache& cache,
                              int64_t layer_index);
  // train.recompute: selective (the latent norms; see recompute.h; the core keeps no
  // probabilities).
  void SetRecompute(bool recompute);

  lora::LoraLinear q_proj{nullptr};              // [H * qk_head, hidden] when q_lora_rank == 0
  lora::LoraLinear q_a_proj{nullptr};            // [q_lora_rank, hidden]
  RMSNorm q_a_layernorm{nullptr};                // [q_lora_rank]
  lora::LoraLinear q_b_proj{nullptr};            // [H * qk_head, q_lora_rank]
  lora::LoraLinear kv_a_proj_with_mqa{nullptr};  // [kv_lora_rank + qk_rope, hidden]
  RMSNorm kv_a_layernorm{nullptr};               // [kv_lora_rank]
  lora::LoraLinear kv_b_proj{nullptr};           // [H * (qk_nope + v), kv_lora_rank]
  lora::LoraLinear o_proj{nullptr};              // [hidden, H * v]

 private:
  struct Projected {
    torch::Tensor q;  // [B, H, T, qk_head] (rope part rotated)
    torch::Tensor k;  // [B, H, T, qk_head] (rope part shared by the heads)
    torch::Tensor v;  // [B, H, T, v_head]
  };
  Projected Project(const torch::Tensor& x, const RopeCosSin& rope);
  torch::Tensor Output(const torch::Tensor& attended);  // [B, H, T, v] -> [B, T, hidden]

  MlaConfig mla_;
  parallel::tensor::TensorParallel tp_;
  int64_t num_heads_;  // on this rank
  double scale_;
};
TORCH_MODULE(MlaAttention);

}  // namespace fulcrum::models
