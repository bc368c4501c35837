#include "trainer/models/decoder_layer.h"

namespace fulcrum::models {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& config, const torch::TensorOptions& options,
                                   const ModelParallel& parallel) {
  // Registration order = HF parameter order.
  self_attn = register_module("self_attn", Attention(config, options, parallel));
  mlp = register_module("mlp", Mlp(config, options, parallel));
  input_layernorm =
      register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const RopeCosSin& rope,
                                        const torch::Tensor& mask) {
  const torch::Tensor h = x + self_attn->forward(input_layernorm->forward(x), rope, mask);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

torch::Tensor DecoderLayerImpl::ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                                              const torch::Tensor& mask, generate::KvCache& cache,
                                              int64_t layer_index) {
  const torch::Tensor h =
      x + self_attn->ForwardCached(input_layernorm->forward(x), rope, mask, cache, layer_index);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

}  // namespace fulcrum::models
