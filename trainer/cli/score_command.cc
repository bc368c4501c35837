// fulcrum score --model DIR [--adapter DIR] --batch IN.safetensors
//               --out OUT.safetensors [--grads]
//
// IN: input_ids int64 [B,T]; optional attention_mask int64 [B,T] (1 = real,
// right padding) and labels int64 [B,T] (-100 ignored, unshifted). Without
// labels the targets are input_ids where attention_mask is 1. OUT: logits
// fp32 [B,T,V], loss fp32 (HF mean), and with --grads grad.<name> fp32 for
// every trainable tensor: every parameter by HF name, or with --adapter every
// adapter tensor by its PEFT key. Rank 0 writes.
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "trainer/checkpoint/safetensors_reader.h"
#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/loop/model_factory.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/loss.h"

namespace fulcrum::cli {
namespace {

absl::StatusOr<torch::Tensor> ReadBatchTensor(const checkpoint::SafetensorsReader& reader,
                                              const std::string& name, bool required,
                                              const std::vector<int64_t>& shape) {
  if (!reader.Contains(name)) {
    if (!required) return torch::Tensor();
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": missing tensor ", name, " (int64 [B,T])"));
  }
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor t, reader.View(name));
  if (t.scalar_type() != torch::kLong || t.dim() != 2 ||
      (!shape.empty() && t.sizes().vec() != shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": ", name, " must be int64 [B,T] like input_ids, got ",
                     c10::toString(t.scalar_type()), " ", c10::str(t.sizes())));
  }
  return t.clone();
}

}  // namespace

absl::Status RunScore(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"model", "adapter", "batch", "out"};
  spec.switches = {"grads"};
  spec.required = {"model", "batch", "out"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("score", args, spec));

  loop::ModelRequest request;
  request.path = flags.Get("model");
  FULCRUM_ASSIGN_OR_RETURN(loop::BuiltModel built, loop::BuildModel(request));
  const bool with_adapter = !flags.Get("adapter").empty();
  if (with_adapter) {
    FULCRUM_RETURN_IF_ERROR(lora::LoadPeftAdapter(*built.model, flags.Get("adapter")).status());
  }
  FULCRUM_ASSIGN_OR_RETURN(auto reader, checkpoint::SafetensorsReader::Open(flags.Get("batch")));
  models::ForwardInputs inputs;
  FULCRUM_ASSIGN_OR_RETURN(inputs.input_ids, ReadBatchTensor(*reader, "input_ids", true, {}));
  const std::vector<int64_t> shape = inputs.input_ids.sizes().vec();
  FULCRUM_ASSIGN_OR_RETURN(inputs.attention_mask,
                           ReadBatchTensor(*reader, "attention_mask", false, shape));
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor labels, ReadBatchTensor(*reader, "labels", false, shape));
  const int64_t vocab = built.config.vocab_size;
  if (inputs.input_ids.min().item<int64_t>() < 0 ||
      inputs.input_ids.max().item<int64_t>() >= vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        flags.Get("batch"), ": input_ids: ids must be in [0, ", vocab, ") for this model"));
  }
  if (!labels.defined()) {
    labels = inputs.input_ids.clone();
    if (inputs.attention_mask.defined()) labels.masked_fill_(inputs.attention_mask.eq(0), -100);
  }
  const bool grads = flags.Has("grads");
  built.model->eval();
  for (auto& p : built.model->parameters()) {
    // Base weights get gradients only when scoring without an adapter.
    if (!with_adapter) p.requires_grad_(grads);
  }
  torch::Tensor logits;
  torch::Tensor loss;
  {
    torch::AutoGradMode grad_mode(grads);
    logits = built.model->forward(inputs);
    loss = models::CausalLmLoss(logits, labels);
    if (grads) loss.backward();
  }
  std::vector<checkpoint::NamedTensor> out = {
      {"logits", logits.detach().to(torch::kFloat).contiguous()},
      {"loss", loss.detach().to(torch::kFloat).reshape({})}};
  if (grads) {
    for (const auto& item : built.model->named_parameters()) {
      if (!item.value().requires_grad()) continue;
      const std::string key = with_adapter ? "base_model.model." + item.key() : item.key();
      torch::Tensor g = item.value().grad();
      if (!g.defined()) g = torch::zeros_like(item.value());
      out.push_back({"grad." + key, g.to(torch::kFloat).contiguous()});
    }
  }
  if (!world.is_root()) return absl::OkStatus();
  return checkpoint::WriteSafetensors(flags.Get("out"), out);
}

}  // namespace fulcrum::cli
