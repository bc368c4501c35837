// ParseRecipe / LoadRecipe / RecipeToYaml. One reader function per section;
// the field lists here and in RecipeToYaml must stay in step (the round-trip
// test sets every field).
#include "trainer/recipe/recipe.h"

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "parallel/pipeline/schedule.h"
#include "trainer/recipe/recipe_internal.h"
#include "trainer/recipe/yaml_fields.h"

namespace fulcrum::recipe {
namespace {

absl::Status ReadModel(MapReader& top, ModelSection* model) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader r, top.Section("model"));
  FULCRUM_RETURN_IF_ERROR(r.Read("path", &model->path));
  FULCRUM_RETURN_IF_ERROR(r.Read("config", &model->config));
  FULCRUM_RETURN_IF_ERROR(r.Read("mtp_layers", &model->mtp_layers));
  return r.Finish();
}

absl::Status ReadDatasets(MapReader& r, DataSection* data) {
  FULCRUM_ASSIGN_OR_RETURN(std::vector<MapReader> entries, r.SectionList("datasets"));
  data->datasets.clear();
  for (MapReader& e : entries) {
    DatasetEntry entry;
    FULCRUM_RETURN_IF_ERROR(e.Read("path", &entry.path));
    // "" (= data.format) or a text format: checked by ValidateRecipe once data.format is known.
    FULCRUM_RETURN_IF_ERROR(e.Read("format", &entry.format));
    FULCRUM_RETURN_IF_ERROR(e.Read("weight", &entry.weight));
    FULCRUM_RETURN_IF_ERROR(e.Read("fields", &entry.fields));
    FULCRUM_RETURN_IF_ERROR(e.Finish());
    data->datasets.push_back(std::move(entry));
  }
  return absl::OkStatus();
}

absl::Status ReadData(MapReader& top, DataSection* data) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader r, top.Section("data"));
  FULCRUM_RETURN_IF_ERROR(r.Read("path", &data->path));
  FULCRUM_RETURN_IF_ERROR(r.ReadEnum("format", KnownDataFormats(), &data->format));
  FULCRUM_RETURN_IF_ERROR(r.Read("shuffle", &data->shuffle));
  FULCRUM_RETURN_IF_ERROR(r.Read("pack", &data->pack));
  FULCRUM_RETURN_IF_ERROR(ReadDatasets(r, data));
  FULCRUM_RETURN_IF_ERROR(r.Read("tokenizer", &data->tokenizer));
  // Template names are checked where templates live (data/template), at validate time.
  FULCRUM_RETURN_IF_ERROR(r.Read("chat_template", &data->chat_template));
  FULCRUM_RETURN_IF_ERROR(r.Read("train_on_prompt", &data->train_on_prompt));
  FULCRUM_RETURN_IF_ERROR(r.Read("mask_history", &data->mask_history));
  FULCRUM_RETURN_IF_ERROR(r.ReadEnum("on_error", KnownErrorPolicies(), &data->on_error));
  FULCRUM_RETURN_IF_ERROR(r.ReadEnum("truncation", KnownTruncations(), &data->truncation));
  FULCRUM_ASSIGN_OR_RETURN(MapReader validation, r.Section("validation"));
  ValidationSection& v = data->validation;
  FULCRUM_RETURN_IF_ERROR(validation.Read("fraction", &v.fraction));
  FULCRUM_RETURN_IF_ERROR(validation.Read("path", &v.path));
  FULCRUM_RETURN_IF_ERROR(validation.Read("format", &v.format));
  FULCRUM_RETURN_IF_ERROR(validation.Finish());
  FULCRUM_RETURN_IF_ERROR(r.Read("cache_dir", &data->cache_dir));
  FULCRUM_RETURN_IF_ERROR(r.Read("num_workers", &data->num_workers));
  return r.Finish();
}

absl::Status ReadFinetune(MapReader& top, FinetuneSection* finetune) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader r, top.Section("finetune"));
  FULCRUM_RETURN_IF_ERROR(r.ReadEnum("method", KnownMethods(), &finetune->method));
  FULCRUM_ASSIGN_OR_RETURN(MapReader lora, r.Section("lora"));
  LoraSection& l = finetune->lora;
  FULCRUM_RETURN_IF_ERROR(lora.Read("rank", &l.rank));
  FULCRUM_RETURN_IF_ERROR(lora.Read("alpha", &l.alpha));
  FULCRUM_RETURN_IF_ERROR(lora.Read("dropout", &l.dropout));
  FULCRUM_RETURN_IF_ERROR(lora.Read("targets", &l.targets));
  FULCRUM_RETURN_IF_ERROR(lora.Read("rslora", &l.rslora));
  FULCRUM_RETURN_IF_ERROR(lora.Finish());
  return r.Finish();
}

absl::Status ReadOptim(MapReader& top, OptimSection* optim) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader r, top.Section("optim"));
  FULCRUM_RETURN_IF_ERROR(r.Read("lr", &optim->lr));
  std::vector<double> betas = {optim->beta1, optim->beta2};
  FULCRUM_RETURN_IF_ERROR(r.ReadNumbers("betas", 2, &betas));
  optim->beta1 = betas[0];
  optim->beta2 = betas[1];
  FULCRUM_RETURN_IF_ERROR(r.Read("eps", &optim->eps));
  FULCRUM_RETURN_IF_ERROR(r.Read("weight_decay", &optim->weight_decay));
  FULCRUM_RETURN_IF_ERROR(r.Read("decay_norms_and_biases", &optim->decay_norms_and_biases));
  FULCRUM_RETURN_IF_ERROR(r.Read("grad_clip", &optim->grad_clip));
  return r.Finish();
}

absl::Status ReadScheduleBatchTrain(MapReader& top, Recipe* recipe) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader schedule, top.Section("schedule"));
  ScheduleSection& s = recipe->schedule;
  FULCRUM_RETURN_IF_ERROR(schedule.ReadEnum("type", KnownScheduleTypes(), &s.type));
  FULCRUM_RETURN_IF_ERROR(schedule.Read("warmup_steps", &s.warmup_steps));
  FULCRUM_RETURN_IF_ERROR(schedule.Read("min_lr_ratio", &s.min_lr_ratio));
  FULCRUM_RETURN_IF_ERROR(schedule.Finish());

  FULCRUM_ASSIGN_OR_RETURN(MapReader batch, top.Section("batch"));
  BatchSection& b = recipe->batch;
  FULCRUM_RETURN_IF_ERROR(batch.Read("global_batch", &b.global_batch));
  FULCRUM_RETURN_IF_ERROR(batch.Read("micro_batch", &b.micro_batch));
  FULCRUM_RETURN_IF_ERROR(batch.Read("seq_len", &b.seq_len));
  FULCRUM_RETURN_IF_ERROR(batch.Finish());

  FULCRUM_ASSIGN_OR_RETURN(MapReader train, top.Section("train"));
  FULCRUM_RETURN_IF_ERROR(train.Read("steps", &recipe->train.steps));
  FULCRUM_RETURN_IF_ERROR(train.Read("eval_every", &recipe->train.eval_every));
  FULCRUM_RETURN_IF_ERROR(
      train.ReadEnum("on_nonfinite", KnownNonfinitePolicies(), &recipe->train.on_nonfinite));
  FULCRUM_RETURN_IF_ERROR(
      train.ReadEnum("recompute", KnownRecomputeModes(), &recipe->train.recompute));
  FULCRUM_RETURN_IF_ERROR(train.Read("memory_gib", &recipe->train.memory_gib));
  return train.Finish();
}

absl::Status ReadPrecisionParallel(MapReader& top, Recipe* recipe) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader precision, top.Section("precision"));
  FULCRUM_RETURN_IF_ERROR(precision.ReadEnum("dtype", KnownDtypes(), &recipe->precision.dtype));
  FULCRUM_RETURN_IF_ERROR(precision.Finish());

  FULCRUM_ASSIGN_OR_RETURN(MapReader parallel, top.Section("parallel"));
  ParallelSection& p = recipe->parallel;
  FULCRUM_RETURN_IF_ERROR(parallel.Read("dp", &p.dp));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("tp", &p.tp));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("pp", &p.pp));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("pp_layers", &p.pp_layers));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("pp_virtual", &p.pp_virtual));
  FULCRUM_RETURN_IF_ERROR(parallel.ReadChecked(
      "pp_schedule",
      [](const std::string& name) { return parallel::pipeline::ParseScheduleKind(name).status(); },
      &p.pp_schedule));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("ep", &p.ep));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("sequence_parallel", &p.sequence_parallel));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("zero", &p.zero));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("bucket_mb", &p.bucket_mb));
  FULCRUM_RETURN_IF_ERROR(parallel.Read("comm_timeout_s", &p.comm_timeout_s));
  return parallel.Finish();
}

absl::Status ReadMoe(MapReader& top, MoeSection* moe) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader r, top.Section("moe"));
  FULCRUM_RETURN_IF_ERROR(r.ReadEnum("aux_loss", KnownAuxLosses(), &moe->aux_loss));
  FULCRUM_RETURN_IF_ERROR(r.Read("aux_loss_coeff", &moe->aux_loss_coeff));
  FULCRUM_RETURN_IF_ERROR(r.Read("z_loss_coeff", &moe->z_loss_coeff));
  FULCRUM_RETURN_IF_ERROR(r.Read("bias_update_rate", &moe->bias_update_rate));
  FULCRUM_RETURN_IF_ERROR(r.Read("capacity_factor", &moe->capacity_factor));
  FULCRUM_RETURN_IF_ERROR(r.Read("pad_to_capacity", &moe->pad_to_capacity));
  return r.Finish();
}

absl::Status ReadCheckpointLogging(MapReader& top, Recipe* recipe) {
  FULCRUM_ASSIGN_OR_RETURN(MapReader checkpoint, top.Section("checkpoint"));
  CheckpointSection& c = recipe->checkpoint;
  FULCRUM_RETURN_IF_ERROR(checkpoint.Read("dir", &c.dir));
  FULCRUM_RETURN_IF_ERROR(checkpoint.Read("every", &c.every));
  FULCRUM_RETURN_IF_ERROR(checkpoint.Read("resume", &c.resume));
  FULCRUM_RETURN_IF_ERROR(checkpoint.Read("keep_last", &c.keep_last));
  FULCRUM_RETURN_IF_ERROR(checkpoint.Read("async", &c.async));
  FULCRUM_RETURN_IF_ERROR(checkpoint.Finish());

  FULCRUM_ASSIGN_OR_RETURN(MapReader logging, top.Section("logging"));
  LoggingSection& l = recipe->logging;
  FULCRUM_RETURN_IF_ERROR(logging.Read("every", &l.every));
  FULCRUM_RETURN_IF_ERROR(logging.Read("metrics_file", &l.metrics_file));
  FULCRUM_RETURN_IF_ERROR(logging.Read("tensorboard_dir", &l.tensorboard_dir));
  FULCRUM_RETURN_IF_ERROR(logging.Read("all_ranks", &l.all_ranks));
  FULCRUM_RETURN_IF_ERROR(logging.Read("peak_flops", &l.peak_flops));
  return logging.Finish();
}

// Parses `root` (already a map, overrides applied) into a Recipe.
absl::StatusOr<Recipe> ConvertTree(const YAML::Node& root, const YamlOrigin& origin) {
  Recipe recipe;
  recipe.source = origin.source();
  FULCRUM_ASSIGN_OR_RETURN(MapReader top, MapReader::Open(&origin, root, ""));
  FULCRUM_RETURN_IF_ERROR(ReadModel(top, &recipe.model));
  FULCRUM_RETURN_IF_ERROR(ReadData(top, &recipe.data));
  FULCRUM_RETURN_IF_ERROR(ReadFinetune(top, &recipe.finetune));
  FULCRUM_RETURN_IF_ERROR(ReadOptim(top, &recipe.optim));
  FULCRUM_RETURN_IF_ERROR(ReadScheduleBatchTrain(top, &recipe));
  FULCRUM_RETURN_IF_ERROR(ReadPrecisionParallel(top, &recipe));
  FULCRUM_RETURN_IF_ERROR(ReadMoe(top, &recipe.moe));
  FULCRUM_RETURN_IF_ERROR(ReadCheckpointLogging(top, &recipe));
  FULCRUM_RETURN_IF_ERROR(top.Read("seed", &recipe.seed));
  FULCRUM_RETURN_IF_ERROR(top.ReadEnum("device", KnownDevices(), &recipe.device));
  FULCRUM_RETURN_IF_ERROR(top.Finish());
  return recipe;
}

struct ParsedRecipe {
  Recipe recipe;
  YamlOrigin origin;  // tells which key paths overrides set
};

absl::StatusOr<ParsedRecipe> ParseWithOrigin(const std::string& yaml_text,
                                             const std::string& source,
                                             const std::vector<std::string>& overrides) {
  YamlOrigin origin(source);
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin.Where("", e.mark), ": malformed YAML: ", e.msg));
  }
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the recipe is empty (expected sections such as model:, data:)"));
  }
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        origin.Where("", root.Mark()),
        ": the recipe must be a map of sections (model:, data:, ...), got ", DescribeNode(root)));
  }
  for (const std::string& text : overrides) {
    FULCRUM_RETURN_IF_ERROR(ApplyOverride(text, root, origin));
  }
  FULCRUM_ASSIGN_OR_RETURN(Recipe recipe, ConvertTree(root, origin));
  return ParsedRecipe{std::move(recipe), std::move(origin)};
}

// `value` relative to `dir` unless it is empty, absolute or `dir` is empty.
void ResolveAgainst(const std::filesystem::path& dir, std::string* value) {
  if (value->empty() || dir.empty() || std::filesystem::path(*value).is_absolute()) return;
  *value = (dir / *value).lexically_normal().string();
}

}  // namespace

absl::StatusOr<Recipe> ParseRecipe(const std::string& yaml_text, const std::string& source,
                                   const std::vector<std::string>& overrides) {
  try {
    FULCRUM_ASSIGN_OR_RETURN(ParsedRecipe parsed, ParseWithOrigin(yaml_text, source, overrides));
    return std::move(parsed.recipe);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(source, ": unexpected error reading the recipe: ", e.what()));
  }
}

absl::StatusOr<Recipe> LoadRecipe(const std::string& path,
                                  const std::vector<std::string>& overrides) {
  FULCRUM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    FULCRUM_ASSIGN_OR_RETURN(ParsedRecipe parsed, ParseWithOrigin(text, path, overrides));
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    auto resolve = [&](const std::string& key_path, std::string* value) {
      if (parsed.origin.OverrideFor(key_path) == nullptr) ResolveAgainst(dir, value);
    };
    Recipe& recipe = parsed.recipe;
    resolve("model.path", &recipe.model.path);
    resolve("model.config", &recipe.model.config);
    resolve("data.path", &recipe.data.path);
    for (size_t i = 0; i < recipe.data.datasets.size(); ++i) {
      resolve(absl::StrCat("data.datasets.", i, ".path"), &recipe.data.datasets[i].path);
    }
    resolve("data.tokenizer", &recipe.data.tokenizer);
    resolve("data.validation.path", &recipe.data.validation.path);
    resolve("data.cache_dir", &recipe.data.cache_dir);
    resolve("checkpoint.dir", &recipe.checkpoint.dir);
    return std::move(recipe);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(path, ": unexpected error reading the recipe: ", e.what()));
  }
}

bool UsesTextData(const DataSection& data) {
  return !data.datasets.empty() || data.format != "pretokenized";
}

void MakePathsAbsolute(Recipe& recipe) {
  std::vector<std::string*> paths = {
      &recipe.model.path,     &recipe.model.config,         &recipe.data.path,
      &recipe.data.tokenizer, &recipe.data.validation.path, &recipe.data.cache_dir,
      &recipe.checkpoint.dir};
  for (DatasetEntry& entry : recipe.data.datasets) paths.push_back(&entry.path);
  for (std::string* path : paths) {
    if (!path->empty()) *path = std::filesystem::absolute(*path).lexically_normal().string();
  }
}

}  // namespace fulcrum::recipe
