// Grouped-query self-attention of Llama/Mistral/Qwen2/Qwen3: q/k/v/o
// projections (LoraLinear, so adapters can attach), optional q/k bias and
// per-head q/k RMSNorm (Qwen3), RoPE, softmax in fp32, scale 1/sqrt(head_dim).
#pragma once

#include <torch/torch.h>

#include "trainer/generate/kv_cache.h"
#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/rms_norm.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {

// q [B, H, T, D], k/v [B, Hkv, S, D], mask [B, 1, T, S] additive -> [B, H, T, D].
// S = T in training; with a KV cache S = past + T (the queries are the last T
// positions). H = Hkv * G: query head h uses kv head h / G (HF repeat_kv).
// The fused kernel on CUDA (LibTorch >= 2.1), EagerAttention elsewhere; neither
// keeps the [B, H, T, S] probabilities for backward.
torch::Tensor GroupedAttention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask, double scale);

class AttentionImpl : public torch::nn::Module {
 public:
  // Under tp this rank holds H/tp query heads and its kv heads (ShardHeads);
  // q/k/v column-parallel, o row-parallel.
  AttentionImpl(const ModelConfig& config, const torch::TensorOptions& options,
                const ModelParallel& parallel = {});
  // x [B, T, hidden], rope cos/sin [B, 1, T, D], mask [B, 1, T, T] -> [B, T, hidden].
  // Under sp x and the result are [B, T/tp, hidden]; rope and mask cover the full T.
  torch::Tensor forward(const torch::Tensor& x, const RopeCosSin& rope, const torch::Tensor& mask);
  // forward(x.y, ...) for x an RMSNorm's output: q/k/v keep the norm's
  // input and statistics instead of x.y (unsharded LoraLinear::ForwardNormed;
  // under tp one node, lora/column_group.h).
  torch::Tensor forward(const RmsNormOutput& x, const RopeCosSin& rope, const torch::Tensor& mask);
  // Incremental decoding: x [B, T, hidden] are the T newest tokens, rope
  // [B, 1, T, D] at their absolute positions, mask [B, 1, T, S] over the S =
  // cache.length() + T keys. Stores this layer's new k/v in `cache`.
  torch::Tensor ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                              const torch::Tensor& mask, generate::KvCache& cache,
                              int64_t layer_index);
  // train.recompute: selective (the q/k norms; see recompute.h). The
  // attention core keeps no probabilities, so it has nothing to recompute.
  void SetRecompute(bool recompute);

  // Shapes unsharded; under tp H -> H/tp, Hkv -> this rank's kv heads.
  lora::LoraLinear q_proj{nullptr};  // [H * D, hidden]
  lora::LoraLinear k_proj{nullptr};  // [Hkv * D, hidden]
  lora::LoraLinear v_proj{nullptr};  // [Hkv * D, hidden]
  lora::LoraLinear o_proj{nullptr};  // [hidden, H * D]
  RMSNorm q_norm{nullptr};           // [D], Qwen3 only
  RMSNorm k_norm{nullptr};           // [D], Qwen3 only

 private:
  struct Projected {
    // Local head counts under tp; T is the full sequence also under sp.
    torch::Tensor q;  // [B, H, T, D] after RoPE
    torch::Tensor k;  // [B, Hkv, T, D] after RoPE
    torch::Tensor v;  // [B, Hkv, T, D]
  };
  Projected Project(const RmsNormOutput& x, const RopeCosSin& rope);
  // attended [B, H, T, D] -> [B, T, hidden]
  torch::Tensor Output(const torch::Tensor& attended);

  int64_t num_heads_;     // on this rank
  int64_t num_kv_heads_;  // on this rank
  int64_t head_dim_;
};
TORCH_MODULE(Attention);

}  // namespace fulcrum::models
