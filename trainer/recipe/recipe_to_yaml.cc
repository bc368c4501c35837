// RecipeToYaml: every field, in the order of recipe.h, so that a run's
// effective recipe can be saved next to its checkpoints and re-run.
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>

#include "core/check.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::recipe {
namespace {

// The shortest decimal that reads back as exactly `value`.
std::string FormatDouble(double value) {
  char buffer[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

// NOTE: strings go out plain where YAML allows (the emitter quotes "", "null",
// "a: b", ...): the parser takes any scalar's text for a string field, so
// `path: 123` reads back as "123".
void Field(YAML::Emitter& out, const char* key, const std::string& value) {
  out << YAML::Key << key << YAML::Value << value;
}
void Field(YAML::Emitter& out, const char* key, int64_t value) {
  out << YAML::Key << key << YAML::Value << value;
}
void Field(YAML::Emitter& out, const char* key, double value) {
  out << YAML::Key << key << YAML::Value << FormatDouble(value);
}
void Field(YAML::Emitter& out, const char* key, bool value) {
  out << YAML::Key << key << YAML::Value << YAML::TrueFalseBool << value;
}
void BeginSection(YAML::Emitter& out, const char* key) {
  out << YAML::Key << key << YAML::Value << YAML::BeginMap;
}

void EmitData(YAML::Emitter& out, const DataSection& data) {
  BeginSection(out, "data");
  Field(out, "path", data.path);
  Field(out, "format", data.format);
  Field(out, "shuffle", data.shuffle);
  Field(out, "pack", data.pack);
  out << YAML::Key << "datasets" << YAML::Value << YAML::BeginSeq;
  for (const DatasetEntry& entry : data.datasets) {
    out << YAML::BeginMap;
    Field(out, "path", entry.path);
    Field(out, "format", entry.format);
    Field(out, "weight", entry.weight);
    out << YAML::Key << "fields" << YAML::Value << YAML::BeginMap;
    for (const auto& [logical, name] : entry.fields) Field(out, logical.c_str(), name);
    out << YAML::EndMap << YAML::EndMap;
  }
  out << YAML::EndSeq;
  Field(out, "tokenizer", data.tokenizer);
  Field(out, "chat_template", data.chat_template);
  Field(out, "train_on_prompt", data.train_on_prompt);
  Field(out, "mask_history", data.mask_history);
  Field(out, "on_error", data.on_error);
  Field(out, "truncation", data.truncation);
  BeginSection(out, "validation");
  Field(out, "fraction", data.validation.fraction);
  Field(out, "path", data.validation.path);
  Field(out, "format", data.validation.format);
  out << YAML::EndMap;
  Field(out, "cache_dir", data.cache_dir);
  Field(out, "num_workers", data.num_workers);
  out << YAML::EndMap;
}

void EmitFinetune(YAML::Emitter& out, const FinetuneSection& finetune) {
  BeginSection(out, "finetune");
  Field(out, "method", finetune.method);
  BeginSection(out, "lora");
  Field(out, "rank", finetune.lora.rank);
  Field(out, "alpha", finetune.lora.alpha);
  Field(out, "dropout", finetune.lora.dropout);
  out << YAML::Key << "targets" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const std::string& target : finetune.lora.targets) out << target;
  out << YAML::EndSeq;
  Field(out, "rslora", finetune.lora.rslora);
  out << YAML::EndMap << YAML::EndMap;
}

void EmitOptimSchedule(YAML::Emitter& out, const Recipe& r) {
  BeginSection(out, "optim");
  Field(out, "lr", r.optim.lr);
  out << YAML::Key << "betas" << YAML::Value << YAML::Flow << YAML::BeginSeq
      << FormatDouble(r.optim.beta1) << FormatDouble(r.optim.beta2) << YAML::EndSeq;
  Field(out, "eps", r.optim.eps);
  Field(out, "weight_decay", r.optim.weight_decay);
  Field(out, "decay_norms_and_biases", r.optim.decay_norms_and_biases);
  Field(out, "grad_clip", r.optim.grad_clip);
  out << YAML::EndMap;

  BeginSection(out, "schedule");
  Field(out, "type", r.schedule.type);
  Field(out, "warmup_steps", r.schedule.warmup_steps);
  Field(out, "min_lr_ratio", r.schedule.min_lr_ratio);
  out << YAML::EndMap;
}

void EmitRunShape(YAML::Emitter& out, const Recipe& r) {
  BeginSection(out, "batch");
  Field(out, "global_batch", r.batch.global_batch);
  Field(out, "micro_batch", r.batch.micro_batch);
  Field(out, "seq_len", r.batch.seq_len);
  out << YAML::EndMap;
  BeginSection(out, "train");
  Field(out, "steps", r.train.steps);
  Field(out, "eval_every", r.train.eval_every);
  Field(out, "on_nonfinite", r.train.on_nonfinite);
  Field(out, "recompute", r.train.recompute);
  Field(out, "memory_gib", r.train.memory_gib);
  out << YAML::EndMap;
  BeginSection(out, "precision");
  Field(out, "dtype", r.precision.dtype);
  out << YAML::EndMap;
  BeginSection(out, "parallel");
  Field(out, "dp", r.parallel.dp);
  Field(out, "tp", r.parallel.tp);
  Field(out, "pp", r.parallel.pp);
  out << YAML::Key << "pp_layers" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const int64_t count : r.parallel.pp_layers) out << count;
  out << YAML::EndSeq;
  Field(out, "pp_virtual", r.parallel.pp_virtual);
  Field(out, "pp_schedule", r.parallel.pp_schedule);
  Field(out, "ep", r.parallel.ep);
  Field(out, "sequence_parallel", r.parallel.sequence_parallel);
  Field(out, "zero", r.parallel.zero);
  Field(out, "bucket_mb", r.parallel.bucket_mb);
  Field(out, "comm_timeout_s", r.parallel.comm_timeout_s);
  out << YAML::EndMap;
}

void EmitCheckpointLogging(YAML::Emitter& out, const Recipe& r) {
  BeginSection(out, "moe");
  Field(out, "aux_loss", r.moe.aux_loss);
  Field(out, "aux_loss_coeff", r.moe.aux_loss_coeff);
  Field(out, "z_loss_coeff", r.moe.z_loss_coeff);
  Field(out, "bias_update_rate", r.moe.bias_update_rate);
  Field(out, "capacity_factor", r.moe.capacity_factor);
  Field(out, "pad_to_capacity", r.moe.pad_to_capacity);
  out << YAML::EndMap;
  BeginSection(out, "checkpoint");
  Field(out, "dir", r.checkpoint.dir);
  Field(out, "every", r.checkpoint.every);
  Field(out, "resume", r.checkpoint.resume);
  Field(out, "keep_last", r.checkpoint.keep_last);
  Field(out, "async", r.checkpoint.async);
  out << YAML::EndMap;
  BeginSection(out, "logging");
  Field(out, "every", r.logging.every);
  Field(out, "metrics_file", r.logging.metrics_file);
  Field(out, "tensorboard_dir", r.logging.tensorboard_dir);
  Field(out, "all_ranks", r.logging.all_ranks);
  Field(out, "peak_flops", r.logging.peak_flops);
  out << YAML::EndMap;
}

}  // namespace

std::string RecipeToYaml(const Recipe& recipe) {
  YAML::Emitter out;
  if (!recipe.source.empty()) out << YAML::Comment("effective recipe from " + recipe.source);
  out << YAML::BeginMap;
  BeginSection(out, "model");
  Field(out, "path", recipe.model.path);
  Field(out, "config", recipe.model.config);
  Field(out, "mtp_layers", recipe.model.mtp_layers);
  out << YAML::EndMap;
  EmitData(out, recipe.data);
  EmitFinetune(out, recipe.finetune);
  EmitOptimSchedule(out, recipe);
  EmitRunShape(out, recipe);
  EmitCheckpointLogging(out, recipe);
  Field(out, "seed", recipe.seed);
  Field(out, "device", recipe.device);
  out << YAML::EndMap;
  FULCRUM_CHECK(out.good(), "YAML emitter failed: ", out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

}  // namespace fulcrum::recipe
