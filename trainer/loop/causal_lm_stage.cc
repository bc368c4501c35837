#include "trainer/loop/causal_lm_stage.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "trainer/loop/forward_inputs.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::loop {
namespace {

// Does the parameter `name` belong to `chunk`?
bool InChunk(const std::string& name, const parallel::pipeline::StageChunk& chunk, bool tied) {
  for (int64_t i = chunk.layers.first; i < chunk.layers.first + chunk.layers.count; ++i) {
    if (absl::StartsWith(name, absl::StrCat("model.layers.", i, "."))) return true;
  }
  if (absl::StartsWith(name, "model.embed_tokens.")) return chunk.first || (chunk.last && tied);
  if (absl::StartsWith(name, "model.norm.") || absl::StartsWith(name, "lm_head.")) {
    return chunk.last;
  }
  return false;
}

}  // namespace

std::vector<std::vector<torch::Tensor>> ChunkTrainableParameters(
    models::CausalLMImpl& model, const std::vector<parallel::pipeline::StageChunk>& chunks) {
  std::vector<std::vector<torch::Tensor>> out(chunks.size());
  const bool tied = model.config().tie_word_embeddings;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    bool placed = false;
    for (size_t c = 0; c < chunks.size(); ++c) {
      if (InChunk(item.key(), chunks[c], tied)) {
        out[c].push_back(item.value());
        placed = true;
      }
    }
    FULCRUM_CHECK(placed, "parameter ", item.key(), " belongs to none of the stage's chunks");
  }
  return out;
}

CausalLmStage::CausalLmStage(models::CausalLMImpl& model,
                             std::vector<parallel::pipeline::StageChunk> chunks,
                             torch::Device device)
    : model_(model), chunks_(std::move(chunks)), device_(device) {
  chunk_params_ = ChunkTrainableParameters(model_, chunks_);
  const torch::Tensor any = model_.parameters().front();
  activation_options_ = torch::TensorOptions().dtype(any.scalar_type()).device(any.device());
  loss_sum_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device_));
}

void CausalLmStage::SetBatch(const std::vector<data::MicroBatch>& micro_batches,
                             double denominator) {
  micro_batches_ = &micro_batches;
  denominator_ = denominator;
  logits_.clear();
  loss_sum_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device_));
}

models::ForwardInputs CausalLmStage::InputsOf(int micro_batch) const {
  FULCRUM_CHECK(micro_batches_ != nullptr && micro_batch >= 0 &&
                    micro_batch < static_cast<int>(micro_batches_->size()),
                "micro-batch ", micro_batch, " of a step without it");
  return ForwardInputsOn((*micro_batches_)[static_cast<size_t>(micro_batch)], device_);
}

torch::Tensor CausalLmStage::Forward(int chunk, int micro_batch, const torch::Tensor& input) {
  // The last chunk hands the final norm's output to the loss, which computes
  // the logits itself, unless they are kept.
  const bool last = chunks_[static_cast<size_t>(chunk)].last;
  const torch::Tensor out =
      model_.ForwardChunk(chunk, InputsOf(micro_batch), input, /*logits=*/keep_logits_);
  if (!last) return out;
  const data::MicroBatch& micro = (*micro_batches_)[static_cast<size_t>(micro_batch)];
  torch::Tensor loss;
  if (keep_logits_) {
    logits_.push_back(out.detach());
    loss = models::TrainingLossSum(model_, out, micro.labels.to(device_));
  } else {
    loss = models::HeadLossSum(model_, out, micro.labels.to(device_));
  }
  loss_sum_ += loss.detach();
  return loss / denominator_;
}

std::vector<int64_t> CausalLmStage::ActivationShape(int /*chunk*/, int micro_batch) const {
  const data::MicroBatch& micro = (*micro_batches_)[static_cast<size_t>(micro_batch)];
  const parallel::tensor::TensorParallel& tp = model_.parallel().tp;
  int64_t t = micro.input_ids.size(1);
  if (tp.active() && tp.sequence_parallel) t /= tp.size();
  return {micro.input_ids.size(0), t, model_.config().hidden_size};
}

torch::TensorOptions CausalLmStage::ActivationOptions() const { return activation_options_; }

std::vector<torch::Tensor> CausalLmStage::ChunkParameters(int chunk) const {
  return chunk_params_[static_cast<size_t>(chunk)];
}

}  // namespace fulcrum::loop
