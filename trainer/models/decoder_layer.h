// One pre-norm decoder layer: x + attn(norm(x)), then h + mlp(norm(h)).
#pragma once

#include <torch/torch.h>

#include "trainer/models/attention.h"
#include "trainer/models/mlp.h"
#include "trainer/models/model_config.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::models {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, const torch::TensorOptions& options,
                   const ModelParallel& parallel = {});
  // x [B, T, hidden], rope [B, 1, T, D], mask [B, 1, T, T] -> [B, T, hidden]
  // (under sp x and the result are [B, T/tp, hidden]: norms and residual adds
  // run on the sequence shard)
  torch::Tensor forward(const torch::Tensor& x, const RopeCosSin& rope, const torch::Tensor& mask);
  // The same with the KV cache (see AttentionImpl::ForwardCached): x [B, T,
  // hidden] new tokens, mask [B, 1, T, cache.length() + T].
  torch::Tensor ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                              const torch::Tensor& mask, generate::KvCache& cache,
                              int64_t layer_index);

  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr};           // [hidden]
  RMSNorm post_attention_layernorm{nullptr};  // [hidden]
};
TORCH_MODULE(DecoderLayer);

}  // namespace fulcrum::models
