// ValidateRecipe: everything that can be checked before any rank touches a
// model or a file. Collects every problem so that a user fixes them in one go.
#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/stage_partition.h"
#include "trainer/models/model_config.h"
#include "trainer/recipe/recipe.h"
#include "trainer/recipe/recipe_internal.h"

namespace fulcrum::recipe {
namespace {

namespace pipeline = ::fulcrum::parallel::pipeline;

// Accumulates "<source>: <key path>: <problem>" lines.
class Problems {
 public:
  explicit Problems(const std::string& source) : source_(source.empty() ? "recipe" : source) {}

  void Add(const std::string& key_path, const std::string& problem) {
    lines_.push_back(absl::StrCat(source_, ": ", key_path, ": ", problem));
  }
  template <typename T>
  void Positive(const std::string& key_path, T value) {
    if (!(value > 0)) Add(key_path, absl::StrCat("must be > 0, got ", value));
  }
  template <typename T>
  void NonNegative(const std::string& key_path, T value) {
    if (!(value >= 0)) Add(key_path, absl::StrCat("must be >= 0, got ", value));
  }
  // lo <= value < hi (or <= hi when `hi_inclusive`).
  void InRange(const std::string& key_path, double value, double lo, double hi, bool hi_inclusive) {
    const bool ok = value >= lo && (hi_inclusive ? value <= hi : value < hi);
    if (!ok) {
      Add(key_path,
          absl::StrCat("must be in [", lo, ", ", hi, hi_inclusive ? "]" : ")", ", got ", value));
    }
  }
  void OneOf(const std::string& key_path, const std::string& value,
             const std::vector<std::string>& allowed) {
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      Add(key_path,
          absl::StrCat("expected one of ", absl::StrJoin(allowed, " | "), ", got \"", value, "\""));
    }
  }
  absl::Status ToStatus() const {
    if (lines_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(lines_, "\n"));
  }

 private:
  std::string source_;
  std::vector<std::string> lines_;
};

void CheckDatasets(const DataSection& d, Problems& p) {
  for (size_t i = 0; i < d.datasets.size(); ++i) {
    const DatasetEntry& e = d.datasets[i];
    const std::string key = absl::StrCat("data.datasets[", i, "]");
    if (e.path.empty()) p.Add(key + ".path", "must be set (a JSONL file)");
    const std::string format = e.format.empty() ? d.format : e.format;
    if (format == "pretokenized") {
      p.Add(key + ".format", "pretokenized data goes through data.path; data.datasets takes " +
                                 absl::StrJoin(KnownTextFormats(), " | "));
    } else {
      p.OneOf(key + ".format", format, KnownTextFormats());
    }
    p.Positive(key + ".weight", e.weight);
    for (const auto& [logical, name] : e.fields) {
      if (name.empty()) p.Add(key + ".fields." + logical, "must name a record key");
    }
  }
}

void CheckData(const Recipe& r, Problems& p) {
  const DataSection& d = r.data;
  if (d.path.empty() && d.datasets.empty()) p.Add("data.path", "must be set (a JSONL file)");
  if (!d.path.empty() && !d.datasets.empty()) {
    p.Add("data.datasets", "set data.path or data.datasets, not both");
  }
  p.OneOf("data.format", d.format, KnownDataFormats());
  CheckDatasets(d, p);
  if (d.chat_template.empty()) p.Add("data.chat_template", "must be auto or a template name");
  p.OneOf("data.on_error", d.on_error, KnownErrorPolicies());
  p.OneOf("data.truncation", d.truncation, KnownTruncations());
  p.NonNegative("data.num_workers", d.num_workers);
  const ValidationSection& v = d.validation;
  p.InRange("data.validation.fraction", v.fraction, 0.0, 1.0, /*hi_inclusive=*/false);
  if (v.fraction > 0 && !v.path.empty()) {
    p.Add("data.validation", "set fraction or path, not both");
  }
  if (!v.format.empty()) p.OneOf("data.validation.format", v.format, KnownTextFormats());
  p.NonNegative("train.eval_every", r.train.eval_every);
  if (r.train.eval_every > 0 && v.fraction <= 0 && v.path.empty()) {
    p.Add("train.eval_every", "needs a validation split: data.validation.fraction or .path");
  }
}

void CheckModelAndData(const Recipe& r, Problems& p) {
  if (r.model.path.empty() == r.model.config.empty()) {
    p.Add("model", r.model.path.empty()
                       ? "set one of model.path (a HF model dir) or model.config (a config.json "
                         "to initialise randomly)"
                       : "set only one of model.path and model.config, not both");
  }
  if (!r.model.mtp_layers.empty())
    p.OneOf("model.mtp_layers", r.model.mtp_layers, {"skip", "load"});
  CheckData(r, p);
}

void CheckFinetuneAndOptim(const Recipe& r, Problems& p) {
  p.OneOf("finetune.method", r.finetune.method, KnownMethods());
  const LoraSection& lora = r.finetune.lora;
  p.Positive("finetune.lora.rank", lora.rank);
  p.Positive("finetune.lora.alpha", lora.alpha);
  p.InRange("finetune.lora.dropout", lora.dropout, 0.0, 1.0, /*hi_inclusive=*/false);
  if (lora.targets.empty()) p.Add("finetune.lora.targets", "must name at least one module");
  const bool all_linear =
      std::find(lora.targets.begin(), lora.targets.end(), "all-linear") != lora.targets.end();
  // all-linear leaves out lm_head and the MoE routers; only the routers may
  // be added to it.
  const bool plus_routers =
      lora.targets.size() == 2 &&
      std::find(lora.targets.begin(), lora.targets.end(), "gate") != lora.targets.end();
  if (all_linear && lora.targets.size() > 1 && !plus_routers) {
    p.Add("finetune.lora.targets",
          "all-linear must be the only target (or come with gate alone, the MoE routers it "
          "leaves out)");
  }
  for (const std::string& target : lora.targets) {
    if (target.empty()) p.Add("finetune.lora.targets", "contains an empty name");
  }
  p.Positive("optim.lr", r.optim.lr);
  p.InRange("optim.betas[0]", r.optim.beta1, 0.0, 1.0, /*hi_inclusive=*/false);
  p.InRange("optim.betas[1]", r.optim.beta2, 0.0, 1.0, /*hi_inclusive=*/false);
  p.Positive("optim.eps", r.optim.eps);
  p.NonNegative("optim.weight_decay", r.optim.weight_decay);
  p.NonNegative("optim.grad_clip", r.optim.grad_clip);
  p.OneOf("schedule.type", r.schedule.type, KnownScheduleTypes());
  p.NonNegative("schedule.warmup_steps", r.schedule.warmup_steps);
  if (r.schedule.warmup_steps > r.train.steps) {
    p.Add("schedule.warmup_steps", absl::StrCat("warmup_steps(", r.schedule.warmup_steps,
                                                ") > train.steps(", r.train.steps, ")"));
  }
  p.InRange("schedule.min_lr_ratio", r.schedule.min_lr_ratio, 0.0, 1.0, /*hi_inclusive=*/true);
}

// The options of the parallel section beyond the degrees.
void CheckParallelOptions(const Recipe& r, Problems& p) {
  const ParallelSection& par = r.parallel;
  if (par.zero != 0 && par.zero != 1) {
    p.Add("parallel.zero",
          absl::StrCat("expected 0 (off) or 1 (ZeRO-1: optimizer state sharded over dp), got ",
                       par.zero));
  }
  p.Positive("parallel.bucket_mb", par.bucket_mb);
  p.Positive("parallel.comm_timeout_s", par.comm_timeout_s);
  if (!par.sequence_parallel) return;
  if (par.tp <= 1) {
    p.Add("parallel.sequence_parallel",
          absl::StrCat("needs parallel.tp > 1 (it shards the sequence over the tp ranks), got tp=",
                       par.tp));
  } else if (r.batch.seq_len > 0 && r.batch.seq_len % par.tp != 0) {
    p.Add("parallel.sequence_parallel",
          absl::StrCat("batch.seq_len(", r.batch.seq_len, ") is not divisible by tp(", par.tp,
                       "): ", r.batch.seq_len, " % ", par.tp, " = ", r.batch.seq_len % par.tp));
  }
}

// The pipeline keys: pp_virtual and pp_schedule agree, pp_layers fits the
// virtual stages, and the schedule can run the step's micro-batches.
void CheckPipeline(const Recipe& r, Problems& p) {
  const ParallelSection& par = r.parallel;
  const absl::StatusOr<pipeline::ScheduleKind> kind = pipeline::ParseScheduleKind(par.pp_schedule);
  if (!kind.ok()) p.Add("parallel.pp_schedule", std::string(kind.status().message()));
  const bool interleaved = kind.ok() && *kind == pipeline::ScheduleKind::kInterleaved1F1B;
  bool shape_ok = kind.ok() && par.pp >= 1;
  if (par.pp_virtual < 1) {
    p.Add("parallel.pp_virtual", absl::StrCat("must be >= 1, got ", par.pp_virtual));
    shape_ok = false;
  } else if (kind.ok() && par.pp_virtual > 1 && !interleaved) {
    p.Add("parallel.pp_virtual",
          absl::StrCat("pp_virtual(", par.pp_virtual, ") > 1 needs parallel.pp_schedule: ",
                       "interleaved_1f1b (the only schedule with virtual stages), got ",
                       par.pp_schedule));
    shape_ok = false;
  } else if (interleaved && par.pp_virtual < 2) {
    p.Add("parallel.pp_schedule",
          absl::StrCat("interleaved_1f1b needs parallel.pp_virtual >= 2 (model chunks per stage), "
                       "got ",
                       par.pp_virtual));
    shape_ok = false;
  }
  if (par.pp_virtual > 1 && par.pp == 1) {
    p.Add("parallel.pp_virtual",
          absl::StrCat("pp_virtual(", par.pp_virtual, ") needs parallel.pp > 1, got pp=1"));
  }
  if (!par.pp_layers.empty()) {
    const std::string list = absl::StrCat("[", absl::StrJoin(par.pp_layers, ", "), "]");
    const int64_t needed = par.pp * std::max<int64_t>(par.pp_virtual, 1);
    if (par.pp <= 1) {
      p.Add("parallel.pp_layers", absl::StrCat(list, " is set but parallel.pp is ", par.pp,
                                               " (it splits layers over pipeline stages)"));
    } else if (static_cast<int64_t>(par.pp_layers.size()) != needed) {
      p.Add("parallel.pp_layers",
            absl::StrCat(list, " has ", par.pp_layers.size(), " entries, pp(", par.pp,
                         ") x pp_virtual(", par.pp_virtual, ") = ", needed, " needed"));
    }
    for (size_t i = 0; i < par.pp_layers.size(); ++i) {
      if (par.pp_layers[i] < 1) {
        p.Add(absl::StrCat("parallel.pp_layers[", i, "]"),
              absl::StrCat("must be >= 1 (every virtual stage holds a layer), got ",
                           par.pp_layers[i]));
      }
    }
  }
  const BatchSection& b = r.batch;
  const int64_t per_step = b.micro_batch * par.dp;
  if (!shape_ok || par.pp <= 1 || per_step <= 0 || b.global_batch <= 0 ||
      b.global_batch % per_step != 0) {
    return;  // the problems above (or the batch's) come first
  }
  const int64_t micro_batches = b.global_batch / per_step;
  const absl::Status shape = pipeline::CheckScheduleShape(
      *kind, pipeline::ScheduleShape{static_cast<int>(par.pp), static_cast<int>(micro_batches),
                                     static_cast<int>(par.pp_virtual)});
  if (!shape.ok()) {
    p.Add("parallel.pp_schedule",
          absl::StrCat(shape.message(), " (batch.global_batch(", b.global_batch,
                       ") / (batch.micro_batch(", b.micro_batch, ") x dp(", par.dp,
                       ")) = ", micro_batches, " micro-batches)"));
  }
}

void CheckBatchAndParallel(const Recipe& r, int world_size, Problems& p) {
  const BatchSection& b = r.batch;
  const ParallelSection& par = r.parallel;
  p.Positive("batch.global_batch", b.global_batch);
  p.Positive("batch.micro_batch", b.micro_batch);
  p.Positive("batch.seq_len", b.seq_len);
  p.Positive("train.steps", r.train.steps);
  p.Positive("parallel.dp", par.dp);
  p.Positive("parallel.tp", par.tp);
  p.Positive("parallel.pp", par.pp);
  p.Positive("parallel.ep", par.ep);
  if (b.global_batch > 0 && b.micro_batch > 0 && par.dp > 0 &&
      b.global_batch % (b.micro_batch * par.dp) != 0) {
    p.Add("batch.global_batch",
          absl::StrCat("global_batch(", b.global_batch, ") is not a multiple of micro_batch(",
                       b.micro_batch, ") x dp(", par.dp, ") = ", b.micro_batch * par.dp));
  }
  // The ep ranks are dp ranks that split the experts (MeshLayout).
  if (par.ep > 1 && par.dp > 0 && par.dp % par.ep != 0) {
    p.Add("parallel.ep", absl::StrCat("ep(", par.ep, ") must divide dp(", par.dp,
                                      "): the expert-parallel ranks are data-parallel ranks"));
  }
  const int64_t product = par.dp * par.tp * par.pp;
  if (product != world_size) {
    p.Add("parallel", absl::StrCat("dp(", par.dp, ") x tp(", par.tp, ") x pp(", par.pp,
                                   ") = ", product, " != world size ", world_size));
  }
  CheckParallelOptions(r, p);
  CheckPipeline(r, p);
}

void CheckRest(const Recipe& r, Problems& p) {
  p.OneOf("moe.aux_loss", r.moe.aux_loss, KnownAuxLosses());
  p.NonNegative("moe.aux_loss_coeff", r.moe.aux_loss_coeff);
  p.NonNegative("moe.z_loss_coeff", r.moe.z_loss_coeff);
  p.NonNegative("moe.bias_update_rate", r.moe.bias_update_rate);
  p.NonNegative("moe.capacity_factor", r.moe.capacity_factor);
  if (r.moe.pad_to_capacity && r.moe.capacity_factor <= 0) {
    p.Add("moe.pad_to_capacity",
          "needs moe.capacity_factor > 0: the capacity is the number of slots per expert");
  }
  p.OneOf("train.recompute", r.train.recompute, KnownRecomputeModes());
  p.NonNegative("train.memory_gib", r.train.memory_gib);
  p.OneOf("precision.dtype", r.precision.dtype, KnownDtypes());
  p.OneOf("device", r.device, KnownDevices());
  p.NonNegative("seed", r.seed);
  p.NonNegative("checkpoint.every", r.checkpoint.every);
  p.NonNegative("checkpoint.keep_last", r.checkpoint.keep_last);
  if (r.checkpoint.resume == "latest" && r.checkpoint.dir.empty()) {
    p.Add("checkpoint.resume", "\"latest\" needs checkpoint.dir to be set");
  }
  p.Positive("logging.every", r.logging.every);
  p.NonNegative("logging.peak_flops", r.logging.peak_flops);
}

// The stages must split the model's layers (StagePartition::Create's
// message: the keys and the arithmetic).
void CheckLayersForPipeline(const ParallelSection& par, int64_t num_layers,
                            const std::string& config, Problems& problems) {
  if (par.pp <= 1 && par.pp_layers.empty()) return;
  const absl::StatusOr<pipeline::StagePartition> partition = pipeline::StagePartition::Create(
      num_layers, static_cast<int>(par.pp), static_cast<int>(par.pp_virtual), par.pp_layers);
  if (!partition.ok()) {
    problems.Add(absl::StrCat("parallel.pp=", par.pp),
                 absl::StrCat("num_hidden_layers ", num_layers, " of ", config, ": ",
                              partition.status().message()));
  }
}

void CheckHeadsForTensorParallel(int64_t tp, int64_t num_heads, int64_t num_kv_heads,
                                 int64_t intermediate_size, int64_t vocab_size,
                                 const std::string& config, Problems& problems) {
  if (tp <= 1) return;
  const std::string key = absl::StrCat("parallel.tp=", tp);
  const struct {
    const char* name;
    int64_t value;
  } divisible[] = {{"num_attention_heads", num_heads},
                   {"intermediate_size", intermediate_size},
                   {"vocab_size", vocab_size}};
  for (const auto& field : divisible) {
    if (field.value % tp != 0) {
      problems.Add(
          key, absl::StrCat(field.name, " ", field.value, " of ", config, " is not divisible by ",
                            tp, " (", field.value, " % ", tp, " = ", field.value % tp, ")"));
    }
  }
  // Fewer kv heads than tp ranks: each kv head is replicated on tp/n_kv
  // adjacent ranks, which needs n_kv to divide tp.
  if (num_kv_heads <= 0 || (num_kv_heads % tp != 0 && tp % num_kv_heads != 0)) {
    problems.Add(key, absl::StrCat("num_key_value_heads ", num_kv_heads, " of ", config,
                                   " is neither divisible by ", tp, " (", num_kv_heads, " % ", tp,
                                   " = ", num_kv_heads % tp,
                                   ") nor divides it (kv heads are "
                                   "replicated only when tp is a multiple of them)"));
  }
}

// Tensor parallelism splits attention heads (MLA's too), every MLP's
// intermediate size (routed and shared experts included) and the vocabulary.
void CheckModelForTensorParallel(int64_t tp, const models::ModelConfig& config,
                                 const std::string& config_path, Problems& problems) {
  if (tp <= 1) return;
  bool dense_layers = false;
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    dense_layers = dense_layers || !models::IsMoeLayer(config, layer);
  }
  // MLA has no kv heads to split (each head decompresses its own keys); a
  // dense MLP size that no layer uses need not divide.
  const int64_t kv_heads = config.mla.enabled() ? config.num_heads : config.num_kv_heads;
  const int64_t intermediate = dense_layers ? config.intermediate_size : tp;
  CheckHeadsForTensorParallel(tp, config.num_heads, kv_heads, intermediate, config.vocab_size,
                              config_path, problems);
  if (!config.moe.enabled()) return;
  const std::string key = absl::StrCat("parallel.tp=", tp);
  const std::pair<const char*, int64_t> sizes[] = {
      {"the routed experts' intermediate size", config.moe.expert_intermediate_size},
      {"the shared experts' intermediate size", config.moe.shared_intermediate_size}};
  for (const auto& [what, size] : sizes) {
    if (size % tp != 0) {
      problems.Add(key, absl::StrCat(what, " ", size, " of ", config_path, " is not divisible by ",
                                     tp, " (", size, " % ", tp, " = ", size % tp, ")"));
    }
  }
}

// The config.json the recipe's model comes from (for messages).
std::string ConfigPath(const Recipe& recipe) {
  return recipe.model.path.empty()
             ? recipe.model.config
             : (std::filesystem::path(recipe.model.path) / "config.json").string();
}

// Multi-token-prediction layers are loaded or skipped by an explicit choice.
void CheckMtpLayers(const ModelSection& model, const models::ModelConfig& config,
                    const std::string& config_path, Problems& p) {
  if (model.mtp_layers == "load") {
    p.Add("model.mtp_layers",
          "not supported yet: model.mtp_layers=load (multi-token prediction training)");
  } else if (config.num_mtp_layers > 0 && model.mtp_layers.empty()) {
    p.Add("model.mtp_layers",
          absl::StrCat(config_path, " has num_nextn_predict_layers=", config.num_mtp_layers,
                       " (multi-token-prediction layers after the ", config.num_layers,
                       " decoder layers): set model.mtp_layers: skip to fine-tune without them "
                       "(load is not supported yet)"));
  }
}

}  // namespace

absl::Status ValidateRecipe(const Recipe& recipe, int world_size) {
  FULCRUM_CHECK(world_size >= 1, "world_size=", world_size);
  Problems problems(recipe.source);
  CheckModelAndData(recipe, problems);
  CheckFinetuneAndOptim(recipe, problems);
  CheckBatchAndParallel(recipe, world_size, problems);
  CheckRest(recipe, problems);
  return problems.ToStatus();
}

std::vector<std::string> RecipeWarnings(const Recipe& recipe) {
  const std::string source = recipe.source.empty() ? "recipe" : recipe.source;
  std::vector<std::string> warnings;
  if (recipe.parallel.zero == 1 && recipe.parallel.dp == 1) {
    warnings.push_back(absl::StrCat(
        source,
        ": parallel.zero: zero=1 with dp=1 has no effect (there is no other dp rank to "
        "shard the optimizer state with)"));
  }
  return warnings;
}

absl::Status ValidateParallelForModel(const Recipe& recipe, int64_t num_heads, int64_t num_kv_heads,
                                      int64_t intermediate_size, int64_t vocab_size,
                                      int64_t num_layers) {
  const std::string config = ConfigPath(recipe);
  Problems problems(recipe.source);
  CheckLayersForPipeline(recipe.parallel, num_layers, config, problems);
  CheckHeadsForTensorParallel(recipe.parallel.tp, num_heads, num_kv_heads, intermediate_size,
                              vocab_size, config, problems);
  return problems.ToStatus();
}

namespace {

// The moe section needs routed experts; the bias update a router with the
// correction bias it moves.
void CheckMoeSection(const MoeSection& moe, const models::ModelConfig& config,
                     const std::string& config_path, Problems& problems) {
  const MoeSection defaults;
  const std::string model = absl::StrCat(config.architecture, " (", config_path, ")");
  if (!config.moe.enabled()) {
    const std::pair<const char*, bool> keys[] = {
        {"moe.aux_loss", moe.aux_loss != defaults.aux_loss},
        {"moe.z_loss_coeff", moe.z_loss_coeff != defaults.z_loss_coeff},
        {"moe.bias_update_rate", moe.bias_update_rate != defaults.bias_update_rate},
        {"moe.capacity_factor", moe.capacity_factor != defaults.capacity_factor},
        {"moe.pad_to_capacity", moe.pad_to_capacity != defaults.pad_to_capacity}};
    for (const auto& [key, set] : keys) {
      if (set) {
        problems.Add(key, absl::StrCat("needs a mixture-of-experts model; ", model,
                                       " has no routed experts"));
      }
    }
    return;
  }
  if (moe.bias_update_rate > 0 && !config.moe.correction_bias) {
    problems.Add("moe.bias_update_rate",
                 absl::StrCat("needs routers with e_score_correction_bias (DeepSeek-V3, "
                              "topk_method noaux_tc); ",
                              model, " has none"));
  }
}

}  // namespace

absl::Status ValidateRecipeForModel(const Recipe& recipe, const models::ModelConfig& config) {
  const std::string config_path = ConfigPath(recipe);
  Problems problems(recipe.source);
  CheckMtpLayers(recipe.model, config, config_path, problems);
  CheckModelForTensorParallel(recipe.parallel.tp, config, config_path, problems);
  const int64_t ep = recipe.parallel.ep;
  if (ep > 1 && !config.moe.enabled()) {
    problems.Add("parallel.ep",
                 absl::StrCat("parallel.ep=", ep, " needs a mixture-of-experts model; ",
                              config.architecture, " (", config_path, ") has no routed experts"));
  } else if (ep > 1 && config.moe.num_experts % ep != 0) {
    problems.Add("parallel.ep",
                 absl::StrCat("the ", config.moe.num_experts, " routed experts (", config_path,
                              ") do not split evenly over parallel.ep=", ep));
  }
  CheckMoeSection(recipe.moe, config, config_path, problems);
  // A pipeline stage holds whole layers, whatever they contain.
  CheckLayersForPipeline(recipe.parallel, config.num_layers, config_path, problems);
  return problems.ToStatus();
}

int64_t GradAccumulationSteps(const BatchSection& batch, int64_t dp) {
  const int64_t per_step = batch.micro_batch * dp;
  FULCRUM_CHECK(per_step > 0 && batch.global_batch % per_step == 0,
                "global_batch=", batch.global_batch, " micro_batch=", batch.micro_batch, " dp=", dp,
                " (ValidateRecipe rejects this)");
  return batch.global_batch / per_step;
}

}  // namespace fulcrum::recipe
