#include "trainer/export/logit_self_check.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"

namespace fulcrum::exporter {
namespace {

constexpr int64_t kPromptTokens = 16;

// Token ids spread over the vocabulary (a prime stride), the same for every
// export of a model.
torch::Tensor FixedPrompt(const models::ModelConfig& config) {
  const int64_t t = std::min<int64_t>(kPromptTokens, config.max_position_embeddings);
  return (torch::arange(t, torch::kLong) * 7919 + 13).remainder(config.vocab_size).unsqueeze(0);
}

using ChunkLoader = std::function<absl::Status(models::CausalLMImpl& chunk)>;

// Logits [1, T, V] fp32, computed one decoder layer at a time: layer i is a
// one-chunk pipeline stage (the first also embeds, the last also normalises
// and projects), built in fp32, filled by `load`, run and released.
absl::StatusOr<torch::Tensor> LayerByLayerLogits(const models::ModelConfig& config,
                                                 const torch::Tensor& ids,
                                                 const ChunkLoader& load) {
  torch::NoGradGuard no_grad;
  const models::ForwardInputs inputs(ids);
  torch::Tensor hidden;
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    parallel::pipeline::StageChunk chunk;
    chunk.virtual_stage = static_cast<int>(layer);
    chunk.layers = {layer, 1};
    chunk.first = layer == 0;
    chunk.last = layer == config.num_layers - 1;
    models::ModelParallel parallel;
    parallel.pipeline_chunks = {chunk};
    models::CausalLM stage(config, torch::TensorOptions().dtype(torch::kFloat), parallel);
    FULCRUM_RETURN_IF_ERROR(load(*stage));
    stage->eval();
    hidden = stage->ForwardChunk(0, inputs, hidden);
  }
  return hidden;
}

// The stage's base tensors from the source, as the model holds them.
absl::Status LoadSourceBase(ExportSource& source, models::CausalLMImpl& stage) {
  for (const checkpoint::NamedTensor& held : models::HfStateDict(stage)) {
    FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor value, source.Value(held.name));
    held.tensor.copy_(value);
  }
  return absl::OkStatus();
}

// The source's adapters on the stage's layers, unmerged.
absl::Status LoadSourceAdapters(ExportSource& source, models::CausalLMImpl& stage) {
  if (!source.has_adapters()) return absl::OkStatus();
  const std::set<std::string> adapted(source.adapted_modules().begin(),
                                      source.adapted_modules().end());
  FULCRUM_RETURN_IF_ERROR(
      lora::ApplyLoraWhere(stage, source.lora_spec(), [&](const std::string& p) {
        return adapted.count(p) > 0;
      }).status());
  for (const lora::LoraLayer& layer : lora::LoraLayers(stage)) {
    if (!layer.layer->has_adapter()) continue;
    FULCRUM_ASSIGN_OR_RETURN(const lora::AdapterValues values, source.Adapter(layer.path));
    layer.layer->lora_a().copy_(values.a);
    layer.layer->lora_b().copy_(values.b);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SelfCheckReport> CompareExportLogits(ExportSource& source,
                                                    const std::string& written,
                                                    ExportFormat format) {
  const models::ModelConfig& config = source.config();
  const torch::Tensor ids = FixedPrompt(config);
  FULCRUM_ASSIGN_OR_RETURN(
      const torch::Tensor expected,
      LayerByLayerLogits(config, ids, [&](models::CausalLMImpl& stage) -> absl::Status {
        FULCRUM_RETURN_IF_ERROR(LoadSourceBase(source, stage));
        return LoadSourceAdapters(source, stage);
      }));

  ChunkLoader load_written;
  std::optional<checkpoint::HfWeights> weights;
  if (format == ExportFormat::kPeft) {
    load_written = [&](models::CausalLMImpl& stage) -> absl::Status {
      FULCRUM_RETURN_IF_ERROR(LoadSourceBase(source, stage));
      return lora::LoadPeftAdapter(stage, written,
                                   [&](const std::string& module_path) {
                                     return stage.parallel().HeldByOtherStage(module_path);
                                   })
          .status();
    };
  } else {
    FULCRUM_ASSIGN_OR_RETURN(weights, checkpoint::HfWeights::Open(written));
    load_written = [&](models::CausalLMImpl& stage) {
      const absl::Status loaded = models::LoadHfWeights(stage, *weights);
      weights->DropResidentPages();  // copied into the stage
      return loaded;
    };
  }
  absl::StatusOr<torch::Tensor> actual = LayerByLayerLogits(config, ids, load_written);
  if (!actual.ok()) return Annotate(actual.status(), "export self-check: reading back the export");

  SelfCheckReport report;
  report.tokens = ids.size(1);
  report.max_abs_diff = (*actual - expected).abs().max().item<double>();
  report.max_abs_logit = expected.abs().max().item<double>();
  if (!std::isfinite(report.max_abs_diff)) report.max_abs_diff = INFINITY;
  return report;
}

}  // namespace fulcrum::exporter
