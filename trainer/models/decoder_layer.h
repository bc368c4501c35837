// One pre-norm decoder layer: x + attn(norm(x)), then h + ffn(norm(h)). The
// attention is grouped-query (Llama, Qwen, Mixtral) or multi-head latent
// (DeepSeek); the feed-forward is a dense SwiGLU MLP or a mixture of experts
// (IsMoeLayer).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "trainer/models/attention.h"
#include "trainer/models/mla_attention.h"
#include "trainer/models/mlp.h"
#include "trainer/models/model_config.h"
#include "trainer/models/moe_block.h"
#include "trainer/models/recompute.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::models {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  // `layer_index`: the layer's global index (which layers are MoE depends on it).
  DecoderLayerImpl(const ModelConfig& config, int64_t layer_index,
                   const torch::TensorOptions& options, const ModelParallel& parallel = {});
  // x [B, T, hidden], rope [B, 1, T, D], mask [B, 1, T, T] -> [B, T, hidden]
  // (under sp x and the result are [B, T/tp, hidden]: norms and residual adds
  // run on the sequence shard)
  torch::Tensor forward(const torch::Tensor& x, const RopeCosSin& rope, const torch::Tensor& mask);
  // The same with the KV cache (see AttentionImpl::ForwardCached): x [B, T,
  // hidden] new tokens, mask [B, 1, T, cache.length() + T].
  torch::Tensor ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                              const torch::Tensor& mask, generate::KvCache& cache,
                              int64_t layer_index);
  // train.recompute: full makes training forwards keep only x and recompute
  // the whole layer in backward (random draws replayed); selective passes
  // to the norms (recompute.h).
  void SetRecompute(Recompute mode);

  // Exactly one attention, registered as "self_attn" either way.
  Attention self_attn{nullptr};       // grouped-query families
  MlaAttention latent_attn{nullptr};  // MLA families (config.mla.enabled())
  // Exactly one feed-forward: "mlp", or for a MoE layer "mlp" /
  // "block_sparse_moe" (Mixtral).
  Mlp mlp{nullptr};
  MoeBlock moe{nullptr};
  RMSNorm input_layernorm{nullptr};           // [hidden]
  RMSNorm post_attention_layernorm{nullptr};  // [hidden]

 private:
  // forward's computation; `pass` reaches the MoE block's bookkeeping.
  torch::Tensor Compute(const torch::Tensor& x, const RopeCosSin& rope, const torch::Tensor& mask,
                        ForwardPass pass);
  torch::Tensor FeedForward(const torch::Tensor& h, ForwardPass pass);

  Recompute recompute_ = Recompute::kNone;
};
TORCH_MODULE(DecoderLayer);

}  // namespace fulcrum::models
