#include "trainer/models/parallel_layout.h"

#include <map>

#include "absl/strings/match.h"
#include "core/check.h"
#include "parallel/tensor/parallel_layers.h"
#include "parallel/tensor/partial_gradients.h"
#include "parallel/tensor/tp_ops.h"
#include "parallel/tensor/vocab_parallel_cross_entropy.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/loss.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::models {
namespace {

using parallel::tensor::ShardKind;
using parallel::tensor::TensorParallel;

constexpr char kLoraA[] = ".lora_A.weight";
constexpr char kLoraB[] = ".lora_B.weight";

std::string StripSuffix(const std::string& name, const std::string& suffix) {
  return name.substr(0, name.size() - suffix.size());
}

// "a.b.weight" -> "a.b"
std::string ModulePath(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

void SetReplicated(ParamLayout& layout, bool partial) {
  layout.kind = ShardKind::kReplicated;
  layout.shard_dim = -1;
  layout.grad_sync = partial ? GradSync::kTp : GradSync::kNone;
  layout.counted_in_norm = layout.tp.rank() == 0;
}

void SetSharded(ParamLayout& layout, ShardKind kind, int64_t dim, int kv_replicas) {
  layout.kind = kind;
  layout.shard_dim = dim;
  layout.kv_replicas = kv_replicas;
  layout.grad_sync = kv_replicas > 1 ? GradSync::kKvReplicas : GradSync::kNone;
  layout.counted_in_norm = layout.tp.rank() % kv_replicas == 0;
}

// A parameter of a sharded LoraLinear: `what` is "weight", "bias", "lora_A", "lora_B".
void LayoutOfLinear(ParamLayout& layout, const lora::LoraLinearImpl& linear,
                    const std::string& what) {
  const bool sp = layout.tp.sequence_parallel;
  if (linear.parallel().shard == lora::LinearShard::kColumn) {
    // One kv head replicated on several ranks: out rows per rank * tp > out.
    const int64_t held = linear.local_range().length * layout.tp.size();
    const int replicas = static_cast<int>(held / linear.out_features());
    if (what == "lora_A") return SetReplicated(layout, /*partial=*/true);  // x_in full, B_r partial
    return SetSharded(layout, ShardKind::kColumn, 0, replicas);
  }
  if (linear.parallel().shard == lora::LinearShard::kNone) {
    // Replicated linears in a tp model (MLA's latent projections, Qwen2-MoE's
    // shared-expert gate) run on the full sequence on every rank.
    return SetReplicated(layout, /*partial=*/false);
  }
  if (what == "weight" || what == "lora_A") return SetSharded(layout, ShardKind::kRow, 1, 1);
  // lora_B acts before the reduction, on this rank's partial sum.
  if (what == "lora_B") return SetReplicated(layout, /*partial=*/true);
  // The bias acts after it: partial only on sequence shards, or always when
  // the caller reduces (it then sees partial sums).
  return SetReplicated(layout, sp || linear.parallel().output_partial);
}

// Replicated modules that see the full sequence on every tp rank also under
// sp (MoE routers, MLA's latent norms): their gradients are complete.
bool RunsOnFullSequence(const std::string& module_path) {
  return absl::EndsWith(module_path, ".gate") || absl::EndsWith(module_path, "q_a_layernorm") ||
         absl::EndsWith(module_path, "kv_a_layernorm");
}

// Under pp with tied embeddings the first and the last stage each hold a copy
// of the embedding: their gradients add up over the embedding group, and the
// norm counts the first stage's copy.
void SetTiedCopy(ParamLayout& layout, const CausalLMImpl& model) {
  const ModelParallel& parallel = model.parallel();
  if (!model.config().tie_word_embeddings || !parallel.pipelined()) return;
  if (parallel.HoldsFirst() && parallel.HoldsLast()) return;  // one stage, one copy
  FULCRUM_CHECK(layout.grad_sync == GradSync::kNone, "tied embedding with partial gradients");
  layout.grad_sync = GradSync::kEmbedding;
  layout.counted_in_norm = layout.counted_in_norm && parallel.HoldsFirst();
}

}  // namespace

std::vector<ParamLayout> ParallelLayouts(CausalLMImpl& model) {
  const TensorParallel& tp = model.parallel().tp;
  std::map<std::string, const lora::LoraLinearImpl*> linears;
  for (const lora::LoraLayer& l : lora::LoraLayers(model)) linears[l.path] = l.layer;
  std::vector<ParamLayout> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    ParamLayout layout;
    layout.name = item.key();
    layout.param = item.value();
    layout.tp = tp;
    layout.routed_expert = IsRoutedExpertParameter(layout.name);
    const bool embedding = layout.name == "model.embed_tokens.weight";
    if (!tp.active()) {
      if (embedding) SetTiedCopy(layout, model);
      out.push_back(layout);
      continue;
    }
    const std::string& name = layout.name;
    std::string path = ModulePath(name), what = name.substr(path.size() + 1);
    if (absl::EndsWith(name, kLoraA) || absl::EndsWith(name, kLoraB)) {
      what = absl::EndsWith(name, kLoraA) ? "lora_A" : "lora_B";
      path = StripSuffix(name, kLoraA);  // same length as kLoraB
    }
    const auto linear = linears.find(path);
    if (linear != linears.end()) {
      LayoutOfLinear(layout, *linear->second, what);
    } else if (embedding) {
      SetSharded(layout, ShardKind::kVocab, 0, 1);
      SetTiedCopy(layout, model);
    } else {
      // Norms. q/k norms see only this rank's heads; the others see only the
      // sequence shard under sp.
      const bool per_head = absl::EndsWith(path, "q_norm") || absl::EndsWith(path, "k_norm");
      SetReplicated(layout, per_head || (tp.sequence_parallel && !RunsOnFullSequence(path)));
    }
    out.push_back(layout);
  }
  return out;
}

void SyncPartialGradients(CausalLMImpl& model) {
  std::vector<torch::Tensor> tp_grads, kv_grads, embedding_grads;
  for (ParamLayout& layout : ParallelLayouts(model)) {
    if (layout.grad_sync == GradSync::kNone || !layout.param.requires_grad()) continue;
    if (!layout.param.grad().defined())
      layout.param.mutable_grad() = torch::zeros_like(layout.param);
    switch (layout.grad_sync) {
      case GradSync::kTp:
        tp_grads.push_back(layout.param.grad());
        break;
      case GradSync::kKvReplicas:
        kv_grads.push_back(layout.param.grad());
        break;
      case GradSync::kEmbedding:
        embedding_grads.push_back(layout.param.grad());
        break;
      case GradSync::kNone:
        break;
    }
  }
  if (!embedding_grads.empty()) {
    FULCRUM_CHECK(model.parallel().embedding_group != nullptr,
                  "tied embedding copies under pp but ModelParallel::embedding_group is null");
    parallel::tensor::AllReducePartialGradients(embedding_grads, *model.parallel().embedding_group);
  }
  if (!model.parallel().tp.active()) return;
  parallel::tensor::AllReducePartialGradients(tp_grads, *model.parallel().tp.group);
  if (!kv_grads.empty()) {
    FULCRUM_CHECK(model.parallel().kv_replicas != nullptr,
                  "kv heads are replicated but ModelParallel::kv_replicas is null");
    parallel::tensor::AllReducePartialGradients(kv_grads, *model.parallel().kv_replicas);
  }
}

std::vector<int64_t> FullShape(const ParamLayout& layout) {
  std::vector<int64_t> shape = layout.param.sizes().vec();
  if (layout.shard_dim >= 0) shape[layout.shard_dim] *= layout.tp.size() / layout.kv_replicas;
  return shape;
}

torch::Tensor NarrowToShard(const ParamLayout& layout, const torch::Tensor& full) {
  if (layout.shard_dim < 0) return full;
  const int64_t length = layout.param.size(layout.shard_dim);
  const int64_t index = layout.tp.rank() / layout.kv_replicas;
  return full.narrow(layout.shard_dim, index * length, length);
}

torch::Tensor GatherFull(const ParamLayout& layout, const torch::Tensor& shard_like) {
  if (layout.shard_dim < 0 || !layout.tp.active()) return shard_like;
  torch::NoGradGuard no_grad;
  const torch::Tensor gathered = parallel::tensor::AllGatherAlongDim(
      shard_like.detach().contiguous(), layout.shard_dim, *layout.tp.group);
  if (layout.kv_replicas == 1) return gathered;
  // [tp * len] along dim holds each kv head kv_replicas times: keep one copy.
  std::vector<torch::Tensor> chunks = gathered.chunk(layout.tp.size(), layout.shard_dim);
  std::vector<torch::Tensor> unique;
  for (size_t i = 0; i < chunks.size(); i += layout.kv_replicas) unique.push_back(chunks[i]);
  return torch::cat(unique, layout.shard_dim);
}

std::vector<checkpoint::NamedTensor> GatherFullStateDict(CausalLMImpl& model, bool include_lora) {
  std::vector<checkpoint::NamedTensor> out;
  for (const ParamLayout& layout : ParallelLayouts(model)) {
    const bool is_a = absl::EndsWith(layout.name, kLoraA);
    const bool is_b = absl::EndsWith(layout.name, kLoraB);
    if ((is_a || is_b) && !include_lora) continue;
    std::string name = layout.name;
    if (is_a || is_b) name = lora::PeftKey(StripSuffix(layout.name, kLoraA), is_b);
    out.push_back(checkpoint::NamedTensor{name, GatherFull(layout, layout.param.detach())});
  }
  // Persistent buffers that checkpoints carry (DeepSeek-V3's routing
  // correction biases): replicated over tp, never trained by the optimizer.
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (absl::EndsWith(item.key(), "e_score_correction_bias")) {
      out.push_back(checkpoint::NamedTensor{item.key(), item.value().detach()});
    }
  }
  return out;
}

torch::Tensor GatherLogits(CausalLMImpl& model, const torch::Tensor& logits) {
  const TensorParallel& tp = model.parallel().tp;
  if (!tp.active()) return logits;
  torch::NoGradGuard no_grad;
  return parallel::tensor::AllGatherAlongDim(logits.detach().contiguous(), logits.dim() - 1,
                                             *tp.group);
}

torch::Tensor TrainingLossSum(CausalLMImpl& model, const torch::Tensor& logits,
                              const torch::Tensor& labels) {
  const TensorParallel& tp = model.parallel().tp;
  if (!tp.active()) return CrossEntropySum(logits, labels);
  return parallel::tensor::VocabParallelCrossEntropySum(logits, labels, model.vocab_start(), tp);
}

torch::Tensor HeadLossSum(CausalLMImpl& model, const torch::Tensor& hidden,
                          const torch::Tensor& labels) {
  const lora::LoraLinear& head = model.lm_head;
  if (head && (head->has_adapter() || head->bias.defined())) {
    return TrainingLossSum(model, model.Logits(hidden), labels);
  }
  const torch::Tensor& weight = head ? head->weight : model.model->embed_tokens->weight;
  const TensorParallel& tp = model.parallel().tp;
  if (!tp.active()) return LinearCrossEntropySum(hidden, weight, labels);
  HeadVocab vocab;
  vocab.start = model.vocab_start();
  vocab.tp = tp;
  return LinearCrossEntropySum(parallel::tensor::ColumnParallelInput(hidden, tp), weight, labels,
                               vocab);
}

}  // namespace fulcrum::models
