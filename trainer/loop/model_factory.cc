#include "trainer/loop/model_factory.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::loop {
namespace fs = std::filesystem;

absl::StatusOr<BuiltModel> BuildModel(const ModelRequest& request) {
  BuiltModel built;
  const bool from_dir = !request.path.empty();
  std::error_code ec;
  if (from_dir && !fs::is_directory(request.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model.path: ", request.path, ": no such model directory"));
  }
  const std::string config_path =
      from_dir ? (fs::path(request.path) / "config.json").string() : request.config;
  FULCRUM_ASSIGN_OR_RETURN(built.config, models::LoadModelConfig(config_path));
  const auto options = torch::TensorOptions().dtype(request.dtype).device(request.device);
  built.model = models::CausalLM(built.config, options, request.parallel);
  if (from_dir) {
    FULCRUM_ASSIGN_OR_RETURN(const checkpoint::HfWeights weights,
                             checkpoint::HfWeights::Open(request.path));
    FULCRUM_RETURN_IF_ERROR(models::LoadHfWeights(*built.model, weights, request.load));
    built.source_dir = request.path;
  } else {
    // Under tp / pp each rank takes its part of the whole model's draw (see
    // InitializeWeights), so every layout starts from the same weights.
    models::InitializeWeights(*built.model, request.seed);
  }
  return built;
}

absl::StatusOr<models::ModelConfig> LoadRequestedConfig(const recipe::ModelSection& model) {
  if (model.path.empty()) return models::LoadModelConfig(model.config);
  std::error_code ec;
  if (!fs::is_directory(model.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model.path: ", model.path, ": no such model directory"));
  }
  return models::LoadModelConfig((fs::path(model.path) / "config.json").string());
}

torch::ScalarType ParamDtype(const recipe::PrecisionSection& precision) {
  return precision.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat;
}

lora::LoraOptions LoraOptionsFrom(const recipe::LoraSection& section) {
  lora::LoraOptions options;
  options.spec.rank = section.rank;
  options.spec.alpha = section.alpha;
  options.spec.dropout = section.dropout;
  options.spec.rslora = section.rslora;
  options.targets = section.targets;
  return options;
}

}  // namespace fulcrum::loop
