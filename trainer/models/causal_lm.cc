#include "trainer/models/causal_lm.h"

#include <limits>

#include "core/check.h"
#include "parallel/tensor/parallel_layers.h"
#include "trainer/models/attention_mask.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t vocab_size, int64_t hidden_size,
                                       const torch::TensorOptions& options,
                                       const parallel::tensor::TensorParallel& tp)
    : tp_(tp) {
  const parallel::tensor::ShardRange rows = parallel::tensor::EvenShard(
      vocab_size, tp.active() ? tp.rank() : 0, tp.active() ? tp.size() : 1);
  vocab_start_ = rows.start;
  weight = register_parameter("weight", torch::empty({rows.length, hidden_size}, options));
}

torch::Tensor TokenEmbeddingImpl::forward(const torch::Tensor& ids) {
  if (tp_.active()) return parallel::tensor::VocabParallelLookup(ids, weight, vocab_start_, tp_);
  return torch::embedding(weight, ids);
}

DecoderStackImpl::DecoderStackImpl(const ModelConfig& config, const torch::TensorOptions& options,
                                   const ModelParallel& parallel)
    : config_(config), parallel_(parallel) {
  embed_tokens = register_module(
      "embed_tokens", TokenEmbedding(config.vocab_size, config.hidden_size, options, parallel.tp));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) {
    layers->push_back(DecoderLayer(config, options, parallel));
  }
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
  // [B, T, hidden]; under sp reduce-scattered to this rank's [B, T/tp, hidden].
  torch::Tensor h = embed_tokens->forward(inputs.input_ids.to(device));
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
  FULCRUM_CHECK(!parallel_.tp.active(), "cached generation under tensor parallelism");
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

CausalLMImpl::CausalLMImpl(const ModelConfig& config, const torch::TensorOptions& options,
                           const ModelParallel& parallel)
    : config_(config), parallel_(parallel) {
  model = register_module("model", DecoderStack(config, options, parallel));
  if (!config.tie_word_embeddings) {
    // Column-parallel over the vocab, output not gathered.
    lm_head = register_module(
        "lm_head", lora::LoraLinear(config.hidden_size, config.vocab_size, false, options,
                                    ProjectionParallel("lm_head", parallel)));
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
  if (lm_head) return lm_head->forward(h).to(torch::kFloat);  // [B, T, V] or [B, T, V/tp]
  // Tied: the embedding (shard) is the lm_head (shard); the input enters the tp
  // region as a column-parallel input (gathered under sp).
  const torch::Tensor h_in =
      parallel_.tp.active() ? fulcrum::parallel::tensor::ColumnParallelInput(h, parallel_.tp) : h;
  return torch::nn::functional::linear(h_in, model->embed_tokens->weight).to(torch::kFloat);
}

const ModelConfig& CausalLMImpl::config() const { return config_; }

}  // namespace fulcrum::models
