#include "trainer/models/causal_lm.h"

#include <limits>

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

namespace {

// Additive mask [B, 1, T, past + T] of T new queries at absolute positions
// past..past+T-1 over every cached key: key j is visible to query i iff
// j <= past + i. Masked entries hold the dtype's lowest value, as in
// BuildAttentionMask.
torch::Tensor CachedCausalMask(int64_t batch, int64_t past, int64_t t, torch::ScalarType dtype,
                               const torch::Device& device) {
  const auto longs = torch::TensorOptions().dtype(torch::kLong).device(device);
  const torch::Tensor key_pos = torch::arange(past + t, longs).unsqueeze(0);          // [1, S]
  const torch::Tensor query_pos = torch::arange(past, past + t, longs).unsqueeze(1);  // [T, 1]
  const torch::Tensor visible = key_pos.le(query_pos);                                // [T, S]
  double lowest = 0.0;  // the dtype's lowest finite value (bf16's differs from fp32's)
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, dtype, "lowest", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  const torch::Tensor mask =
      torch::zeros({t, past + t}, torch::TensorOptions().dtype(dtype).device(device))
          .masked_fill_(visible.logical_not(), lowest);
  return mask.view({1, 1, t, past + t}).expand({batch, 1, t, past + t});
}

}  // namespace

torch::Tensor DecoderStackImpl::ForwardCached(const torch::Tensor& input_ids,
                                              generate::KvCache& cache) {
  FULCRUM_CHECK(input_ids.dim() == 2, "input_ids must be [B, T], got ", input_ids.dim(), " dims");
  FULCRUM_CHECK(cache.num_layers() == static_cast<int64_t>(layers->size()), "cache has ",
                cache.num_layers(), " layers, model ", layers->size());
  const int64_t b = input_ids.size(0), t = input_ids.size(1), past = cache.length();
  const torch::Device device = embed_tokens->weight.device();
  const torch::ScalarType dtype = embed_tokens->weight.scalar_type();
  const torch::Tensor position_ids =
      torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kLong).device(device))
          .expand({b, t});
  const RopeCosSin rope = ComputeRopeCosSin(inv_freq_, position_ids, dtype);
  const torch::Tensor mask = CachedCausalMask(b, past, t, dtype, device);
  torch::Tensor h = embed_tokens->forward(input_ids.to(device));  // [B, T, hidden]
  int64_t index = 0;
  for (const auto& layer : *layers) {
    h = layer->as<DecoderLayerImpl>()->ForwardCached(h, rope, mask, cache, index++);
  }
  cache.Advance(t);
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
  return Logits(model->forward(inputs));
}

torch::Tensor CausalLMImpl::ForwardCached(const torch::Tensor& input_ids, generate::KvCache& cache,
                                          bool last_only) {
  torch::Tensor h = model->ForwardCached(input_ids, cache);  // [B, T, hidden]
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);          // [B, 1, hidden]
  return Logits(h);
}

generate::KvCache CausalLMImpl::NewKvCache(int64_t batch, int64_t capacity) const {
  generate::KvCacheShape shape;
  shape.num_layers = config_.num_layers;
  shape.batch = batch;
  shape.num_kv_heads = config_.num_kv_heads;
  shape.head_dim = config_.head_dim;
  shape.capacity = capacity;
  const torch::Tensor& w = model->embed_tokens->weight;
  return generate::KvCache(shape, torch::TensorOptions().dtype(w.scalar_type()).device(w.device()));
}

torch::Tensor CausalLMImpl::Logits(const torch::Tensor& h) {
  const torch::Tensor logits =
      lm_head ? lm_head->forward(h) : torch::nn::functional::linear(h, model->embed_tokens->weight);
  return logits.to(torch::kFloat);  // [B, T, V]
}

const ModelConfig& CausalLMImpl::config() const { return config_; }

}  // namespace fulcrum::models
