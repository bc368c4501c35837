// CausalLM: embedding -> decoder layers -> final RMSNorm -> lm_head (or the
// tied embedding). Submodule names make named_parameters() keys equal the HF
// checkpoint keys ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight").
#pragma once

#include <torch/torch.h>

#include <vector>

#include "trainer/generate/kv_cache.h"
#include "trainer/lora/lora_linear.h"
#include "trainer/models/decoder_layer.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::models {

struct ForwardInputs {
  // A constructor (not an aggregate) so that `model->forward({ids})` and
  // `{ids, mask}` compile under -Wextra -Werror (missing-field-initializers).
  ForwardInputs(torch::Tensor input_ids = {}, torch::Tensor attention_mask = {},
                torch::Tensor position_ids = {}, torch::Tensor document_ids = {})
      : input_ids(std::move(input_ids)),
        attention_mask(std::move(attention_mask)),
        position_ids(std::move(position_ids)),
        document_ids(std::move(document_ids)) {}

  torch::Tensor input_ids;  // [B, T] int64
  torch::Tensor
      attention_mask;          // [B, T] int64 1 = real token (right padding); optional (undefined)
  torch::Tensor position_ids;  // [B, T] int64; optional: 0..T-1 when undefined
  torch::Tensor document_ids;  // [B, T] int64; optional: packed rows attend only within a document
};

// Holds the embedding matrix under the name "weight". Under tp it holds the
// rows [vocab_start, vocab_start + vocab/tp) and looks up with
// VocabParallelEmbedding semantics.
class TokenEmbeddingImpl : public torch::nn::Module {
 public:
  TokenEmbeddingImpl(int64_t vocab_size, int64_t hidden_size, const torch::TensorOptions& options,
                     const parallel::tensor::TensorParallel& tp = {});
  // ids [B, T] int64 -> [B, T, hidden] (under sp this rank's [B, T/tp, hidden])
  torch::Tensor forward(const torch::Tensor& ids);
  int64_t vocab_start() const { return vocab_start_; }
  torch::Tensor weight;  // [vocab, hidden] (under tp [vocab/tp, hidden])

 private:
  parallel::tensor::TensorParallel tp_;
  int64_t vocab_start_ = 0;
};
TORCH_MODULE(TokenEmbedding);

// The decoder layers a model holds, each registered under its GLOBAL index
// ("13") so that parameter names stay the HF keys on a pipeline stage that
// holds only some layers. Kept in ascending global order.
class LayerStackImpl : public torch::nn::Module {
 public:
  LayerStackImpl() = default;
  // Appends the layer with global index `index` (greater than every held one).
  void Append(int64_t index, DecoderLayer layer);
  int64_t size() const { return static_cast<int64_t>(layers_.size()); }
  // The i-th held layer (local order) and its global index.
  DecoderLayerImpl& at(int64_t i) { return *layers_.at(static_cast<size_t>(i)); }
  const DecoderLayerImpl& at(int64_t i) const { return *layers_.at(static_cast<size_t>(i)); }
  int64_t global_index(int64_t i) const { return indices_.at(static_cast<size_t>(i)); }
  // The i-th held layer as ModuleList gives it (`layers[i]->as<DecoderLayerImpl>()`).
  std::shared_ptr<torch::nn::Module> operator[](size_t i) const { return layers_.at(i).ptr(); }
  // The local position of global layer `index`; FULCRUM_CHECK that it is held.
  int64_t LocalIndexOf(int64_t index) const;

 private:
  std::vector<DecoderLayer> layers_;
  std::vector<int64_t> indices_;
};
TORCH_MODULE(LayerStack);

// The rope tables and the attention mask of one micro-batch, shared by every
// layer of a forward (or of a pipeline chunk).
struct LayerInputs {
  RopeCosSin rope;  // [B, 1, T, D]
  // [B, 1, T, T] additive, param dtype; undefined on CUDA for a causal-only
  // batch (IsCausalOnly): the fused attention then runs is_causal.
  torch::Tensor mask;
};

// HF's `model.` prefix: everything but the lm_head. On a pipeline stage
// (ModelParallel::pipeline_chunks) it holds only the stage's layers, the
// embedding where the stage holds virtual stage 0 (or the tied lm_head copy
// on the last stage) and the final norm on the last stage.
class DecoderStackImpl : public torch::nn::Module {
 public:
  DecoderStackImpl(const ModelConfig& config, const torch::TensorOptions& options,
                   const ModelParallel& parallel = {});
  // -> hidden states after the final norm [B, T, hidden] (param dtype); under
  // sp this rank's sequence shard [B, T/tp, hidden].
  torch::Tensor forward(const ForwardInputs& inputs);
  // Incremental decoding: input_ids [B, T] are the tokens after the
  // cache.length() already in `cache` (positions continue from there; no
  // padding) -> hidden states [B, T, hidden]. Appends their k/v to the cache.
  // Not under tp (FULCRUM_CHECK).
  torch::Tensor ForwardCached(const torch::Tensor& input_ids, generate::KvCache& cache);

  // Rope cos/sin and the mask of `inputs` (every pipeline chunk builds its own
  // from the micro-batch's ids, positions and masks).
  LayerInputs PrepareLayerInputs(const ForwardInputs& inputs);
  // h [B, T, hidden] (under sp [B, T/tp, hidden]) through the held global
  // layers [first, first + count) -> same shape.
  torch::Tensor RunLayers(torch::Tensor h, int64_t first, int64_t count, const LayerInputs& in);
  // Any held parameter: the dtype and device the stack computes in.
  const torch::Tensor& AnyWeight() const;

  TokenEmbedding embed_tokens{nullptr};  // null on a stage without the embedding
  LayerStack layers{nullptr};
  RMSNorm norm{nullptr};  // null on a stage without the last virtual stage

 private:
  ModelConfig config_;
  ModelParallel parallel_;
  torch::Tensor inv_freq_;  // [head_dim/2] fp32; moved to the weights' device per forward if needed
  double rope_attention_factor_ = 1.0;  // yarn's scale of cos and sin (1 otherwise)
};
TORCH_MODULE(DecoderStack);

class CausalLMImpl : public torch::nn::Module {
 public:
  // Parameters created with `options` (dtype fp32 or bf16, device) and left
  // uninitialised. Under tp (parallel.tp.active()) each rank builds its shard
  // (trainer/models/parallel_layout.h describes every parameter's layout).
  CausalLMImpl(const ModelConfig& config, const torch::TensorOptions& options,
               const ModelParallel& parallel = {});
  // -> logits [B, T, V] float32 (computed in the param dtype, returned as fp32).
  // Under tp the vocab shard [B, T, V/tp] of this rank, not gathered (see
  // GatherLogits / TrainingLossSum in parallel_layout.h).
  // Not on a pipeline stage that lacks part of the model (FULCRUM_CHECK): use
  // ForwardChunk.
  torch::Tensor forward(const ForwardInputs& inputs);
  // What forward() hands to Logits(): the final norm's output [B, T, hidden]
  // (under sp [B, T/tp, hidden]), for a loss that computes the logits itself
  // (HeadLossSum in parallel_layout.h).
  torch::Tensor ForwardHidden(const ForwardInputs& inputs);
  // h [B, T, hidden] (under sp [B, T/tp, hidden]) -> logits [B, T, V] fp32
  // (under tp [B, T, V/tp]).
  torch::Tensor Logits(const torch::Tensor& h);
  // One pipeline chunk. chunk: local chunk index (into
  // ModelParallel::pipeline_chunks); hidden: the activation entering the chunk
  // [B, T, hidden] in the param dtype (under sp [B, T/tp, hidden]); undefined
  // on virtual stage 0, which embeds inputs.input_ids. -> the chunk's output
  // activation, same shape; on the last virtual stage the logits, as forward()
  // gives them, or with `logits` false the final norm's output as
  // ForwardHidden() gives it. Rope and mask are built from `inputs`.
  torch::Tensor ForwardChunk(int chunk, const ForwardInputs& inputs, const torch::Tensor& hidden,
                             bool logits = true);
  // See DecoderStackImpl::ForwardCached. -> logits [B, T, V] fp32, or [B, 1, V]
  // of the last position only when `last_only` (a long prompt's prefill then
  // skips T-1 vocab projections).
  torch::Tensor ForwardCached(const torch::Tensor& input_ids, generate::KvCache& cache,
                              bool last_only = false);
  // An empty cache for this model: `batch` rows, room for `capacity`
  // positions, in the parameters' dtype and device.
  generate::KvCache NewKvCache(int64_t batch, int64_t capacity) const;
  const ModelConfig& config() const;
  const ModelParallel& parallel() const { return parallel_; }
  // train.recompute for every held layer (and, selective, the final norm).
  void SetRecompute(Recompute mode);
  // The first vocab row of this rank's logits / embedding shard (0 without tp).
  int64_t vocab_start() const;

  DecoderStack model{nullptr};
  // [vocab, hidden] (under tp column-parallel over vocab: [vocab/tp, hidden]);
  // null when tie_word_embeddings.
  lora::LoraLinear lm_head{nullptr};

 private:
  ModelConfig config_;
  ModelParallel parallel_;
};
TORCH_MODULE(CausalLM);

}  // namespace fulcrum::models
