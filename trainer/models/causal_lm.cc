#include "trainer/models/causal_lm.h"

#include "core/check.h"
#include "trainer/models/attention_mask.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t vocab_size, int64_t hidden_size,
                                       const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({vocab_size, hidden_size}, options));
}

torch::Tensor TokenEmbeddingImpl::forward(const torch::Tensor& ids) {
  return torch::embedding(weight, ids);
}

DecoderStackImpl::DecoderStackImpl(const ModelConfig& config, const torch::TensorOptions& options)
    : config_(config) {
  embed_tokens = register_module("embed_tokens",
                                 TokenEmbedding(config.vocab_size, config.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) layers->push_back(DecoderLayer(config, options));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
  // inv_freq stays fp32 whatever the param dtype (HF keeps it fp32 too).
  // Not a buffer, so that module.to(kBFloat16) cannot round it.
  inv_freq_ =
      RopeInvFreq(config.head_dim, config.rope_theta, config.rope_scaling).to(options.device());
}

torch::Tensor DecoderStackImpl::forward(const ForwardInputs& inputs) {
  FULCRUM_CHECK(inputs.input_ids.dim() == 2, "input_ids must be [B, T], got ",
                inputs.input_ids.dim(), " dims");
  const int64_t b = inputs.input_ids.size(0), t = inputs.input_ids.size(1);
  const torch::Device device = embed_tokens->weight.device();
  const torch::ScalarType dtype = embed_tokens->weight.scalar_type();
  torch::Tensor position_ids = inputs.position_ids;
  if (!position_ids.defined()) {
    position_ids =
        torch::arange(t, torch::TensorOptions().dtype(torch::kLong).device(device)).expand({b, t});
  }
  // Built once per forward, shared by every layer: no per-layer mask or host sync.
  const RopeCosSin rope = ComputeRopeCosSin(inv_freq_, position_ids.to(device), dtype);
  const torch::Tensor mask =
      BuildAttentionMask(b, t, inputs.attention_mask, inputs.document_ids, dtype, device);
  torch::Tensor h = embed_tokens->forward(inputs.input_ids.to(device));  // [B, T, hidden]
  for (const auto& layer : *layers) h = layer->as<DecoderLayerImpl>()->forward(h, rope, mask);
  return norm->forward(h);
}

CausalLMImpl::CausalLMImpl(const ModelConfig& config, const torch::TensorOptions& options)
    : config_(config) {
  model = register_module("model", DecoderStack(config, options));
  if (!config.tie_word_embeddings) {
    lm_head = register_module(
        "lm_head", lora::LoraLinear(config.hidden_size, config.vocab_size, false, options));
  }
}

torch::Tensor CausalLMImpl::forward(const ForwardInputs& inputs) {
  const torch::Tensor h = model->forward(inputs);  // [B, T, hidden]
  const torch::Tensor logits =
      lm_head ? lm_head->forward(h) : torch::nn::functional::linear(h, model->embed_tokens->weight);
  return logits.to(torch::kFloat);  // [B, T, V]
}

const ModelConfig& CausalLMImpl::config() const { return config_; }

}  // namespace fulcrum::models
