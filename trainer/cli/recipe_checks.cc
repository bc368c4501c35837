#include "trainer/cli/recipe_checks.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "trainer/checkpoint/dtype.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/loop/data_factory.h"
#include "trainer/loop/model_factory.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"

namespace fulcrum::cli {
namespace fs = std::filesystem;
namespace {

// Names and shapes of the checkpoint against a model built on the meta
// device (no memory): every parameter present with its shape.
absl::Status CheckWeights(models::CausalLMImpl& model, const std::string& dir) {
  FULCRUM_ASSIGN_OR_RETURN(const checkpoint::HfWeights weights, checkpoint::HfWeights::Open(dir));
  for (const checkpoint::NamedTensor& expected : models::HfStateDict(model)) {
    if (!weights.Contains(expected.name)) {
      return absl::NotFoundError(absl::StrCat(dir, ": missing tensor ", expected.name));
    }
    FULCRUM_ASSIGN_OR_RETURN(const checkpoint::TensorEntry entry, weights.Entry(expected.name));
    if (entry.shape != expected.tensor.sizes().vec()) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": tensor ", expected.name, " has shape [", absl::StrJoin(entry.shape, ","),
          "], the config implies ", c10::str(expected.tensor.sizes())));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RecipeReport> CheckRecipeResources(const recipe::Recipe& recipe) {
  RecipeReport report;
  const bool from_dir = !recipe.model.path.empty();
  std::error_code ec;
  if (from_dir && !fs::is_directory(recipe.model.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat(recipe.source, ": model.path: ", recipe.model.path, ": no such directory"));
  }
  const std::string config_path =
      from_dir ? (fs::path(recipe.model.path) / "config.json").string() : recipe.model.config;
  FULCRUM_ASSIGN_OR_RETURN(const models::ModelConfig config, models::LoadModelConfig(config_path));
  FULCRUM_RETURN_IF_ERROR(Annotate(models::CheckSequenceLength(config, recipe.batch.seq_len),
                                   absl::StrCat(recipe.source, ": batch.seq_len")));
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipeForModel(recipe, config));
  models::CausalLM model(
      config,
      torch::TensorOptions().device(torch::kMeta).dtype(loop::ParamDtype(recipe.precision)));
  if (from_dir) FULCRUM_RETURN_IF_ERROR(CheckWeights(*model, recipe.model.path));
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  absl::StrAppend(
      &report.summary,
      absl::StrFormat("  model: %s, %d layers, hidden %d, %d parameters\n", config.architecture,
                      config.num_layers, config.hidden_size, params));
  if (recipe.finetune.method == "lora") {
    FULCRUM_ASSIGN_OR_RETURN(const int64_t adapted,
                             lora::ApplyLora(*model, loop::LoraOptionsFrom(recipe.finetune.lora)));
    absl::StrAppend(&report.summary, "  lora: ", adapted, " adapted linear layers\n");
  }
  FULCRUM_ASSIGN_OR_RETURN(
      const data::DataLoader loader,
      loop::BuildDataLoader(recipe, config.vocab_size, /*dp_rank=*/0, recipe.parallel.dp));
  absl::StrAppend(&report.summary,
                  absl::StrFormat("  data: %s -> %d rows of %d tokens per epoch\n",
                                  recipe.data.path, loader.rows_per_epoch(), recipe.batch.seq_len));
  absl::StrAppend(&report.summary,
                  absl::StrFormat("  batch: global %d = micro %d x accumulation %d x dp %d\n",
                                  recipe.batch.global_batch, recipe.batch.micro_batch,
                                  recipe::GradAccumulationSteps(recipe.batch, recipe.parallel.dp),
                                  recipe.parallel.dp));
  if (recipe.parallel.tp > 1 || recipe.parallel.dp > 1) {
    absl::StrAppend(&report.summary,
                    absl::StrFormat("  parallel: dp %d x tp %d x pp %d%s%s\n", recipe.parallel.dp,
                                    recipe.parallel.tp, recipe.parallel.pp,
                                    recipe.parallel.sequence_parallel ? ", sequence parallel" : "",
                                    recipe.parallel.zero == 1 ? ", zero 1" : ""));
  }
  return report;
}

}  // namespace fulcrum::cli
