#include "trainer/models/causal_lm.h"

#include <limits>

#include "core/check.h"
#include "parallel/tensor/parallel_layers.h"
#include "trainer/models/attention_mask.h"
#include "trainer/models/rotary.h"
#include "trainer/models/torch_compat.h"

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

void LayerStackImpl::Append(int64_t index, DecoderLayer layer) {
  FULCRUM_CHECK(indices_.empty() || index > indices_.back(), "layer ", index,
                " appended after layer ", indices_.empty() ? -1 : indices_.back());
  layers_.push_back(register_module(std::to_string(index), std::move(layer)));
  indices_.push_back(index);
}

int64_t LayerStackImpl::LocalIndexOf(int64_t index) const {
  for (size_t i = 0; i < indices_.size(); ++i) {
    if (indices_[i] == index) return static_cast<int64_t>(i);
  }
  FULCRUM_CHECK(false, "layer ", index, " is not held by this pipeline stage");
  return -1;
}

DecoderStackImpl::DecoderStackImpl(const ModelConfig& config, const torch::TensorOptions& options,
                                   const ModelParallel& parallel)
    : config_(config), parallel_(parallel) {
  // Registration order = HF order: embedding, layers (ascending), norm. A
  // tied model's last stage holds an embedding copy as its lm_head.
  const bool tied_head = config.tie_word_embeddings && parallel.HoldsLast();
  if (parallel.HoldsFirst() || tied_head) {
    embed_tokens = register_module(
        "embed_tokens",
        TokenEmbedding(config.vocab_size, config.hidden_size, options, parallel.tp));
  }
  layers = register_module("layers", LayerStack());
  if (!parallel.pipelined()) {
    for (int64_t i = 0; i < config.num_layers; ++i) {
      layers->Append(i, DecoderLayer(config, i, options, parallel));
    }
  } else {
    for (const auto& chunk : parallel.pipeline_chunks) {
      FULCRUM_CHECK(
          chunk.layers.count >= 0 && chunk.layers.first + chunk.layers.count <= config.num_layers,
          "pipeline chunk layers [", chunk.layers.first, ", +", chunk.layers.count,
          ") outside the model's ", config.num_layers, " layers");
      for (int64_t i = 0; i < chunk.layers.count; ++i) {
        const int64_t index = chunk.layers.first + i;
        layers->Append(index, DecoderLayer(config, index, options, parallel));
      }
    }
  }
  if (parallel.HoldsLast()) {
    norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
  }
  // inv_freq stays fp32 whatever the param dtype (HF keeps it fp32 too).
  // Not a buffer, so that module.to(kBFloat16) cannot round it.
  inv_freq_ = RopeInvFreq(config.head_dim, config.rope_theta, config.rope_scaling,
                          config.max_position_embeddings)
                  .to(options.device());
  rope_attention_factor_ = RopeAttentionFactor(config.rope_scaling, config.max_position_embeddings);
}

const torch::Tensor& DecoderStackImpl::AnyWeight() const {
  if (embed_tokens) return embed_tokens->weight;
  FULCRUM_CHECK(layers->size() > 0, "a pipeline stage without embedding or layers");
  return layers->at(0).input_layernorm->weight;
}

LayerInputs DecoderStackImpl::PrepareLayerInputs(const ForwardInputs& inputs) {
  FULCRUM_CHECK(inputs.input_ids.dim() == 2, "input_ids must be [B, T], got ",
                inputs.input_ids.dim(), " dims");
  const int64_t b = inputs.input_ids.size(0), t = inputs.input_ids.size(1);
  const torch::Device device = AnyWeight().device();
  const torch::ScalarType dtype = AnyWeight().scalar_type();
  torch::Tensor position_ids = inputs.position_ids;
  if (!position_ids.defined()) {
    position_ids =
        torch::arange(t, torch::TensorOptions().dtype(torch::kLong).device(device)).expand({b, t});
  }
  // Built once per forward (or chunk), shared by every layer: no per-layer
  // mask or host sync. A causal-only batch on CUDA needs none: the fused
  // attention's causal kernel (flash) takes no mask.
  const bool mask_free = compat::RunsFusedAttention(device) &&
                         IsCausalOnly(inputs.attention_mask, inputs.document_ids);
  return LayerInputs{
      ComputeRopeCosSin(inv_freq_, position_ids.to(device), dtype, rope_attention_factor_),
      mask_free
          ? torch::Tensor()
          : BuildAttentionMask(b, t, inputs.attention_mask, inputs.document_ids, dtype, device)};
}

torch::Tensor DecoderStackImpl::RunLayers(torch::Tensor h, int64_t first, int64_t count,
                                          const LayerInputs& in) {
  if (count == 0) return h;
  const int64_t local = layers->LocalIndexOf(first);
  FULCRUM_CHECK(local + count <= layers->size() &&
                    layers->global_index(local + count - 1) == first + count - 1,
                "layers [", first, ", +", count, ") are not all held by this stage");
  for (int64_t i = local; i < local + count; ++i) h = layers->at(i).forward(h, in.rope, in.mask);
  return h;
}

torch::Tensor DecoderStackImpl::forward(const ForwardInputs& inputs) {
  FULCRUM_CHECK(embed_tokens && norm && layers->size() == config_.num_layers,
                "forward() of a pipeline stage holding part of the model: use ForwardChunk");
  const LayerInputs in = PrepareLayerInputs(inputs);
  // [B, T, hidden]; under sp reduce-scattered to this rank's [B, T/tp, hidden].
  torch::Tensor h = embed_tokens->forward(inputs.input_ids.to(AnyWeight().device()));
  h = RunLayers(h, 0, config_.num_layers, in);
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
  FULCRUM_CHECK(!parallel_.pipelined(), "cached generation under pipeline parallelism");
  FULCRUM_CHECK(cache.num_layers() == layers->size(), "cache has ", cache.num_layers(),
                " layers, model ", layers->size());
  const int64_t b = input_ids.size(0), t = input_ids.size(1), past = cache.length();
  const torch::Device device = embed_tokens->weight.device();
  const torch::ScalarType dtype = embed_tokens->weight.scalar_type();
  const torch::Tensor position_ids =
      torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kLong).device(device))
          .expand({b, t});
  const RopeCosSin rope = ComputeRopeCosSin(inv_freq_, position_ids, dtype, rope_attention_factor_);
  const torch::Tensor mask = CachedCausalMask(b, past, t, dtype, device);
  torch::Tensor h = embed_tokens->forward(input_ids.to(device));  // [B, T, hidden]
  for (int64_t i = 0; i < layers->size(); ++i) {
    h = layers->at(i).ForwardCached(h, rope, mask, cache, i);
  }
  cache.Advance(t);
  return norm->forward(h);
}

CausalLMImpl::CausalLMImpl(const ModelConfig& config, const torch::TensorOptions& options,
                           const ModelParallel& parallel)
    : config_(config), parallel_(parallel) {
  model = register_module("model", DecoderStack(config, options, parallel));
  if (!config.tie_word_embeddings && parallel.HoldsLast()) {
    // Column-parallel over the vocab, output not gathered.
    lm_head = register_module(
        "lm_head", lora::LoraLinear(config.hidden_size, config.vocab_size, false, options,
                                    ProjectionParallel("lm_head", parallel)));
  }
}

torch::Tensor CausalLMImpl::forward(const ForwardInputs& inputs) {
  return Logits(ForwardHidden(inputs));
}

torch::Tensor CausalLMImpl::ForwardHidden(const ForwardInputs& inputs) {
  return model->forward(inputs);
}

torch::Tensor CausalLMImpl::ForwardChunk(int chunk, const ForwardInputs& inputs,
                                         const torch::Tensor& hidden, bool logits) {
  const std::vector<parallel::pipeline::StageChunk>& chunks = parallel_.pipeline_chunks;
  FULCRUM_CHECK(chunk >= 0 && static_cast<size_t>(chunk) < chunks.size(), "chunk ", chunk,
                " of a stage with ", chunks.size(), " pipeline chunks");
  const parallel::pipeline::StageChunk& c = chunks[static_cast<size_t>(chunk)];
  const LayerInputs in = model->PrepareLayerInputs(inputs);
  torch::Tensor h;  // [B, T, hidden] (under sp [B, T/tp, hidden])
  if (c.first) {
    h = model->embed_tokens->forward(inputs.input_ids.to(model->AnyWeight().device()));
  } else {
    FULCRUM_CHECK(hidden.defined(), "chunk ", chunk, " (virtual stage ", c.virtual_stage,
                  ") needs the previous stage's activation");
    h = hidden;
  }
  h = model->RunLayers(h, c.layers.first, c.layers.count, in);
  if (!c.last) return h;
  h = model->norm->forward(h);
  return logits ? Logits(h) : h;
}

torch::Tensor CausalLMImpl::ForwardCached(const torch::Tensor& input_ids, generate::KvCache& cache,
                                          bool last_only) {
  torch::Tensor h = model->ForwardCached(input_ids, cache);  // [B, T, hidden]
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);          // [B, 1, hidden]
  return Logits(h);
}

generate::KvCache CausalLMImpl::NewKvCache(int64_t batch, int64_t capacity) const {
  generate::KvCacheShape shape;
  shape.num_layers = model->layers->size();
  shape.batch = batch;
  shape.num_kv_heads = config_.num_kv_heads;
  shape.head_dim = config_.head_dim;
  if (config_.mla.enabled()) {
    // MLA caches the decompressed per-head keys and values.
    shape.num_kv_heads = config_.num_heads;
    shape.head_dim = config_.mla.qk_head_dim();
    shape.value_head_dim = config_.mla.v_head_dim;
  }
  shape.capacity = capacity;
  const torch::Tensor& w = model->AnyWeight();
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

void CausalLMImpl::SetRecompute(Recompute mode) {
  for (int64_t i = 0; i < model->layers->size(); ++i) model->layers->at(i).SetRecompute(mode);
  if (model->norm) model->norm->SetRecompute(mode == Recompute::kSelective);
}

int64_t CausalLMImpl::vocab_start() const {
  if (lm_head) return lm_head->local_range().start;
  FULCRUM_CHECK(model->embed_tokens, "vocab_start() on a stage without the lm_head");
  return model->embed_tokens->vocab_start();
}

}  // namespace fulcrum::models
