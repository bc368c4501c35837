// fulcrum export --checkpoint CKPT --format hf|merged|peft --out DIR
//                [--adapter DIR] [--dtype auto|fp32|bf16] [--max-shard-size BYTES]
//
// CKPT is a training checkpoint (step directory, or a checkpoint.dir holding
// `latest`) or an HF model directory (with an optional PEFT --adapter).
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "parallel/runtime/logger.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/loop/model_factory.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/moe_block.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::cli {
namespace fs = std::filesystem;
namespace {

struct ExportSource {
  loop::BuiltModel built;
  bool has_adapter = false;
  lora::LoraOptions lora;
  std::string base_path;  // what adapter_config.json names as its base
};

// A training checkpoint: its recipe rebuilds the model, the checkpoint
// supplies the trained tensors.
absl::StatusOr<ExportSource> LoadFromTrainCheckpoint(const std::string& dir) {
  FULCRUM_ASSIGN_OR_RETURN(std::unique_ptr<checkpoint::ShardedCheckpointReader> reader,
                           checkpoint::ShardedCheckpointReader::Open(dir));
  FULCRUM_ASSIGN_OR_RETURN(
      const recipe::Recipe recipe,
      recipe::ParseRecipe(reader->metadata().header.recipe_yaml, dir + "/recipe.yaml"));
  ExportSource source;
  loop::ModelRequest request;
  request.path = recipe.model.path;
  request.config = recipe.model.config;
  request.dtype = loop::ParamDtype(recipe.precision);
  request.seed = static_cast<uint64_t>(recipe.seed);
  request.load.skip_mtp_layers = recipe.model.mtp_layers == "skip";
  torch::manual_seed(recipe.seed);  // the run's random init, if any
  FULCRUM_ASSIGN_OR_RETURN(source.built, loop::BuildModel(request));
  if (recipe.finetune.method == "lora") {
    source.lora = loop::LoraOptionsFrom(recipe.finetune.lora).WithSeed(recipe.seed);
    FULCRUM_RETURN_IF_ERROR(lora::ApplyLora(*source.built.model, source.lora).status());
    source.has_adapter = true;
  }
  source.base_path = recipe.model.path;
  torch::NoGradGuard no_grad;
  auto params = source.built.model->named_parameters();
  auto buffers = source.built.model->named_buffers();
  // One trained tensor at a time, assembled from the ranks' pieces.
  constexpr absl::string_view kModel = "model/";
  for (const auto& [key, saved] : reader->metadata().tensors) {
    if (!absl::StartsWith(key, kModel)) continue;
    const std::string name = key.substr(kModel.size());
    // The routers' correction biases are buffers the training may have moved.
    torch::Tensor* param =
        models::IsPersistentBuffer(name) ? buffers.find(name) : params.find(name);
    if (param == nullptr || param->sizes().vec() != saved.shape) {
      return absl::DataLossError(absl::StrCat(dir, "/metadata.json: tensor ", key,
                                              " does not fit the model its recipe builds"));
    }
    FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor tensor, reader->ReadWhole(key));
    param->copy_(tensor);
  }
  return source;
}

absl::StatusOr<ExportSource> LoadSource(const std::string& checkpoint_path,
                                        const std::string& adapter) {
  if (!fs::exists(checkpoint_path)) {
    return absl::NotFoundError(absl::StrCat("--checkpoint: ", checkpoint_path, ": no such path"));
  }
  if (checkpoint::IsTrainCheckpoint(checkpoint_path) ||
      fs::is_regular_file(fs::path(checkpoint_path) / "latest")) {
    if (!adapter.empty()) {
      return absl::InvalidArgumentError(
          "--adapter applies to an HF model directory, not to a "
          "training checkpoint");
    }
    FULCRUM_ASSIGN_OR_RETURN(const std::string dir,
                             checkpoint::ResolveCheckpoint(checkpoint_path, checkpoint_path));
    return LoadFromTrainCheckpoint(dir);
  }
  ExportSource source;
  loop::ModelRequest request;
  request.path = checkpoint_path;
  FULCRUM_ASSIGN_OR_RETURN(source.built, loop::BuildModel(request));
  source.base_path = checkpoint_path;
  if (!adapter.empty()) {
    FULCRUM_ASSIGN_OR_RETURN(source.lora, lora::LoadPeftAdapter(*source.built.model, adapter));
    source.has_adapter = true;
  }
  return source;
}

// Adapters on routed experts are valid PEFT (transformers' per-expert
// modules load them), but engines that fuse the experts into one tensor may
// not, and adapters on routers load only where the router is an nn.Linear:
// say so rather than let a serving stack drop them silently.
void WarnAboutRoutedExpertAdapters(torch::nn::Module& model, const parallel::World& world) {
  int64_t adapted = 0;
  std::vector<std::string> experts, routers;
  for (const lora::LoraLayer& layer : lora::LoraLayers(model)) {
    if (!layer.layer->has_adapter()) continue;
    ++adapted;
    if (models::IsRoutedExpertParameter(layer.path)) experts.push_back(layer.path);
    if (lora::LastComponent(layer.path) == "gate") routers.push_back(layer.path);
  }
  if (!routers.empty()) {
    parallel::Logger(world.rank(), false)
        .Warn("fulcrum export --format peft: ", routers.size(),
              " adapted modules are MoE routers (", routers.front(),
              ", ...). PEFT loads them where the router is an nn.Linear (Mixtral, Qwen-MoE) but "
              "not on DeepSeek's gate, and inference engines do not apply LoRA to routers: for "
              "those, export --format merged.");
  }
  if (experts.empty()) return;
  parallel::Logger(world.rank(), false)
      .Warn("fulcrum export --format peft: ", experts.size(), " of the adapter's ", adapted,
            " adapted modules are routed experts (", experts.front(),
            ", ...). Hugging Face PEFT loads them onto transformers' per-expert modules, but "
            "inference engines that fuse the experts into one weight (vLLM, SGLang) may not "
            "apply LoRA to routed experts: for those, export --format merged, or train with "
            "finetune.lora.targets that leave the experts out.");
}

}  // namespace

absl::Status RunExport(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"checkpoint", "format", "out", "adapter", "dtype", "max-shard-size"};
  spec.required = {"checkpoint", "format", "out"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("export", args, spec));
  const std::string format = flags.Get("format");
  if (format != "hf" && format != "merged" && format != "peft") {
    return absl::InvalidArgumentError(
        absl::StrCat("fulcrum export: --format: '", format, "' is not one of hf, merged, peft"));
  }
  checkpoint::HfExportOptions options;
  FULCRUM_ASSIGN_OR_RETURN(options.dtype, checkpoint::ParseExportDtype(flags.Get("dtype")));
  if (!flags.Get("max-shard-size").empty() &&
      (!absl::SimpleAtoi(flags.Get("max-shard-size"), &options.max_shard_bytes) ||
       options.max_shard_bytes <= 0)) {
    return absl::InvalidArgumentError("fulcrum export: --max-shard-size: expected bytes > 0");
  }
  options.out_dir = flags.Get("out");
  FULCRUM_ASSIGN_OR_RETURN(ExportSource source,
                           LoadSource(flags.Get("checkpoint"), flags.Get("adapter")));
  options.source_dir = source.built.source_dir;
  if (!world.is_root()) return absl::OkStatus();

  if (format == "peft") {
    if (!source.has_adapter) {
      return absl::InvalidArgumentError(
          "fulcrum export --format peft: the checkpoint has no LoRA adapter (full fine-tune: use "
          "hf)");
    }
    FULCRUM_ASSIGN_OR_RETURN(const std::string staged, MakeStagingDirectory(options.out_dir));
    FULCRUM_RETURN_IF_ERROR(
        lora::WritePeftAdapter(*source.built.model, source.lora, source.base_path, staged));
    FULCRUM_RETURN_IF_ERROR(PublishDirectory(staged, options.out_dir));
    WarnAboutRoutedExpertAdapters(*source.built.model, world);
    return absl::OkStatus();
  }
  if (format == "hf" && source.has_adapter) {
    return absl::InvalidArgumentError(
        "fulcrum export --format hf: the model has LoRA adapters; use --format merged (folded into "
        "the weights) or --format peft (the adapter alone)");
  }
  if (source.has_adapter) lora::MergeLora(*source.built.model);
  return checkpoint::ExportHfModel(models::HfStateDict(*source.built.model),
                                   source.built.config.raw, options);
}

}  // namespace fulcrum::cli
