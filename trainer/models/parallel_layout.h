// How every parameter of a (tensor-parallel) CausalLM is laid out over the tp
// group, which gradients are partial sums to add up before the dp reduction,
// and the collectives that turn shards back into full tensors.
//
// Defines: GradSync, ParamLayout, ParallelLayouts, SyncPartialGradients,
// FullShape, NarrowToShard, GatherFull, GatherFullStateDict, GatherLogits,
// TrainingLossSum, HeadLossSum.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/tensor/tensor_parallel.h"
#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/models/causal_lm.h"

namespace fulcrum::models {

// Partial gradients to sum before the dp reduction.
enum class GradSync {
  kNone,  // the rank's gradient is already complete
  kTp,    // sum over the tp group (sp-sharded activations, replicated lora_A of a column layer)
  kKvReplicas,  // sum over the ranks holding the same kv head (ModelParallel::kv_replicas)
  // sum over ModelParallel::embedding_group: the tied embedding's copies on
  // the first and the last pipeline stage
  kEmbedding,
};

struct ParamLayout {
  std::string name;     // named_parameters key (= HF key for base weights)
  torch::Tensor param;  // the live parameter (this rank's shard)
  parallel::tensor::ShardKind kind = parallel::tensor::ShardKind::kReplicated;
  int64_t shard_dim = -1;  // 0 / 1, -1 replicated
  // > 1: the shard is one kv head held by kv_replicas adjacent tp ranks; its
  // index in the full tensor is tp_rank / kv_replicas.
  int kv_replicas = 1;
  GradSync grad_sync = GradSync::kNone;
  bool counted_in_norm =
      true;  // this rank counts it in the global grad norm (each element once over tp)
  parallel::tensor::TensorParallel tp;  // the model's tp group (for the gathers below)
  // A routed expert's parameter or adapter (IsRoutedExpertParameter): under
  // expert parallelism only one rank of each ep group holds it, and its
  // gradient is summed over the expert-data-parallel group instead of dp.
  bool routed_expert = false;
};

// Every named parameter (lora_* included), registration order. Rules under tp:
//   vocab / column / row shards: complete grads, counted on every rank;
//   kv-replicated k/v weight, bias, lora_B: kKvReplicas, counted where
//     tp_rank % kv_replicas == 0;
//   replicated (norms, row biases, column lora_A, row lora_B, unsharded
//     linears, MoE routers): counted on tp rank 0; kTp for column lora_A,
//     q/k norms (per-head, local heads only), the row lora_B of MoE experts
//     (whose block reduces their partial sums), and under sp for norms, row
//     biases and row lora_B; never for the routers, MLA's latent norms and
//     the unsharded linears (they run on the full sequence on every rank).
// Without tp: every parameter replicated, kNone, counted.
// Under pp with tied embeddings, when the first and the last stage are
// different ranks: model.embed_tokens.weight is kEmbedding on both, counted
// on the first stage only (and there by the tp rule above).
std::vector<ParamLayout> ParallelLayouts(CausalLMImpl& model);

// Sums the partial gradients (kTp over the tp group, kKvReplicas over
// ModelParallel::kv_replicas, kEmbedding over ModelParallel::embedding_group)
// of parameters that require grad; an undefined grad becomes zeros first so
// every rank joins the same collectives. Collective over tp (and over the
// embedding group on the stages holding a tied copy); no-op without tp and
// without such a copy.
void SyncPartialGradients(CausalLMImpl& model);

// The full (unsharded) shape of a layout's parameter.
std::vector<int64_t> FullShape(const ParamLayout& layout);
// This rank's slice of a full tensor (a view), e.g. an HF checkpoint tensor.
torch::Tensor NarrowToShard(const ParamLayout& layout, const torch::Tensor& full);

// Collective over tp (every tp rank calls it, same order): the full tensor of
// a shard-shaped tensor laid out like `layout` (the parameter, its grad, an
// optimizer moment). Replicated -> shard_like itself. No autograd.
torch::Tensor GatherFull(const ParamLayout& layout, const torch::Tensor& shard_like);

// Collective over tp: full tensors in HfStateDict order under HF names, with
// the adapters (PEFT keys, "base_model.model.<path>.lora_A.weight") after
// the base weight of their layer when include_lora, then the persistent
// buffers a checkpoint holds (gate.e_score_correction_bias). Same on every tp
// rank.
std::vector<checkpoint::NamedTensor> GatherFullStateDict(CausalLMImpl& model, bool include_lora);

// Collective over tp: logits [B, T, V/tp] -> [B, T, V] (as is without tp). No autograd.
torch::Tensor GatherLogits(CausalLMImpl& model, const torch::Tensor& logits);

// The summed causal-LM loss of the model's logits (labels [B, T] unshifted,
// -100 ignored): CrossEntropySum, or under tp VocabParallelCrossEntropySum of
// the vocab shard. 0-dim fp32, same on every tp rank, differentiable.
torch::Tensor TrainingLossSum(CausalLMImpl& model, const torch::Tensor& logits,
                              const torch::Tensor& labels);
// TrainingLossSum(model, model.Logits(hidden), labels) from the final norm's
// output (CausalLMImpl::ForwardHidden). Where the output projection is a
// plain linear (no adapter, no bias) through LinearCrossEntropySum, which
// never holds the [N, V] logits and their gradient (at 1024 tokens and vocab
// 128k that is 1 GiB in fp32; under tp, of the rank's vocab shard).
torch::Tensor HeadLossSum(CausalLMImpl& model, const torch::Tensor& hidden,
                          const torch::Tensor& labels);

}  // namespace fulcrum::models
