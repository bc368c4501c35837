#include "trainer/export/export_source.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"
#include "trainer/loop/model_factory.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::exporter {
namespace fs = std::filesystem;
namespace {

constexpr absl::string_view kModel = "model/";
constexpr absl::string_view kWeight = ".weight";

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// The model's shapes without its memory: names, shapes and dtypes of the
// base tensors, and the LoRA-capable layers (for a PEFT directory's checks).
models::CausalLM MetaModel(const models::ModelConfig& config, torch::ScalarType dtype) {
  return models::CausalLM(config, torch::TensorOptions().dtype(dtype).device(torch::kMeta));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExportSource>> ExportSource::FromTrainCheckpoint(
    const std::string& dir) {
  std::unique_ptr<ExportSource> source(new ExportSource());
  FULCRUM_ASSIGN_OR_RETURN(source->checkpoint_, checkpoint::ShardedCheckpointReader::Open(dir));
  FULCRUM_ASSIGN_OR_RETURN(const recipe::Recipe recipe,
                           recipe::ParseRecipe(source->checkpoint_->metadata().header.recipe_yaml,
                                               dir + "/recipe.yaml"));
  FULCRUM_ASSIGN_OR_RETURN(source->config_, loop::LoadRequestedConfig(recipe.model));
  source->dtype_ = loop::ParamDtype(recipe.precision);
  source->base_path_ = recipe.model.path;
  source->source_dir_ = recipe.model.path;
  source->base_dir_ = recipe.model.path;
  if (recipe.model.path.empty()) {
    source->initial_ = std::make_unique<models::InitialValueStream>(
        source->config_, static_cast<uint64_t>(recipe.seed));
  }
  torch::NoGradGuard no_grad;
  source->specs_ = models::HfStateDict(*MetaModel(source->config_, source->dtype_));
  for (size_t i = 0; i < source->specs_.size(); ++i)
    source->spec_index_[source->specs_[i].name] = i;
  source->lora_spec_ = loop::LoraOptionsFrom(recipe.finetune.lora).spec;
  FULCRUM_RETURN_IF_ERROR(source->IndexCheckpointAdapters());
  if (source->has_adapters() != (recipe.finetune.method == "lora")) {
    return absl::DataLossError(absl::StrCat(
        dir, "/metadata.json: the recipe's finetune.method is ", recipe.finetune.method,
        " but the checkpoint ", source->has_adapters() ? "holds" : "holds no", " LoRA adapters"));
  }
  return source;
}

// The adapters are the checkpoint's "model/<module>.lora_A.weight"; every
// other model/ tensor must be one the recipe's model has.
absl::Status ExportSource::IndexCheckpointAdapters() {
  const std::string where = absl::StrCat(checkpoint_->dir(), "/metadata.json");
  std::map<size_t, std::string> adapted;  // spec index of the module's weight -> module
  for (const auto& [key, saved] : checkpoint_->metadata().tensors) {
    if (!absl::StartsWith(key, kModel)) continue;
    const std::string name = key.substr(kModel.size());
    if (absl::EndsWith(name, ".lora_A.weight") || absl::EndsWith(name, ".lora_B.weight")) {
      const std::string module = name.substr(0, name.size() - strlen(".lora_A.weight"));
      const checkpoint::NamedTensor* weight = SpecOf(absl::StrCat(module, kWeight));
      if (weight == nullptr) {
        return absl::DataLossError(
            absl::StrCat(where, ": adapter ", key, " belongs to no layer of the recipe's model"));
      }
      adapted[spec_index_.at(absl::StrCat(module, kWeight))] = module;
      continue;
    }
    const checkpoint::NamedTensor* spec = SpecOf(name);
    if (spec == nullptr || spec->tensor.sizes() != torch::IntArrayRef(saved.shape)) {
      return absl::DataLossError(absl::StrCat(
          where, ": tensor ", key, " ", ShapeString(saved.shape),
          " does not fit the model its recipe builds",
          spec == nullptr ? ""
                          : absl::StrCat(" (expected ", ShapeString(spec->tensor.sizes()), ")")));
    }
  }
  for (const auto& [index, module] : adapted) adapted_.push_back(module);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExportSource>> ExportSource::FromHfDirectory(
    const std::string& dir, const std::string& adapter_dir) {
  std::unique_ptr<ExportSource> source(new ExportSource());
  FULCRUM_ASSIGN_OR_RETURN(source->config_,
                           models::LoadModelConfig((fs::path(dir) / "config.json").string()));
  // As BuildModel loads an HF directory: in fp32.
  source->dtype_ = torch::kFloat;
  source->base_path_ = dir;
  source->source_dir_ = dir;
  source->base_dir_ = dir;
  torch::NoGradGuard no_grad;
  models::CausalLM meta = MetaModel(source->config_, source->dtype_);
  source->specs_ = models::HfStateDict(*meta);
  for (size_t i = 0; i < source->specs_.size(); ++i)
    source->spec_index_[source->specs_[i].name] = i;
  // Every tensor's presence and shape checked (headers only) before anything
  // is written.
  FULCRUM_ASSIGN_OR_RETURN(checkpoint::HfWeights weights, checkpoint::HfWeights::Open(dir));
  for (const checkpoint::NamedTensor& spec : source->specs_) {
    if (!weights.Contains(spec.name)) {
      return absl::NotFoundError(absl::StrCat(dir, ": missing tensor ", spec.name));
    }
    FULCRUM_ASSIGN_OR_RETURN(const checkpoint::TensorEntry entry, weights.Entry(spec.name));
    if (spec.tensor.sizes() != torch::IntArrayRef(entry.shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": tensor ", spec.name, " has shape ", ShapeString(entry.shape),
                       ", the model expects ", ShapeString(spec.tensor.sizes())));
    }
  }
  source->base_ = std::move(weights);
  if (!adapter_dir.empty()) {
    FULCRUM_ASSIGN_OR_RETURN(lora::PeftAdapter adapter, lora::ReadPeftAdapter(*meta, adapter_dir));
    source->lora_spec_ = adapter.options.spec;
    for (lora::AdapterValues& values : adapter.adapters) {
      source->adapted_.push_back(values.module_path);
      source->peft_[values.module_path] = std::move(values);
    }
  }
  return source;
}

const checkpoint::NamedTensor* ExportSource::SpecOf(const std::string& name) const {
  const auto it = spec_index_.find(name);
  return it == spec_index_.end() ? nullptr : &specs_[it->second];
}

absl::StatusOr<torch::Tensor> ExportSource::BaseValue(const std::string& name) {
  if (initial_ != nullptr) return initial_->ValueOf(name);
  if (base_dir_.empty()) {
    return absl::DataLossError(absl::StrCat(checkpoint_->dir(), "/metadata.json: no tensor model/",
                                            name, " and no model.path to take it from"));
  }
  if (!base_) {
    absl::StatusOr<checkpoint::HfWeights> opened = checkpoint::HfWeights::Open(base_dir_);
    if (!opened.ok()) return Annotate(opened.status(), "the base model (the recipe's model.path)");
    base_ = std::move(*opened);
  }
  // The previous value has been written: its pages need not stay resident.
  base_->DropResidentPages();
  if (!base_->Contains(name)) {
    return absl::NotFoundError(absl::StrCat(base_dir_, ": missing tensor ", name));
  }
  return models::ReadHfTensor(*base_, name, config_);
}

absl::StatusOr<torch::Tensor> ExportSource::Value(const std::string& name) {
  const checkpoint::NamedTensor* spec = SpecOf(name);
  FULCRUM_CHECK(spec != nullptr, "no tensor ", name, " in the model");
  torch::Tensor value;
  const std::string key = absl::StrCat(kModel, name);
  if (checkpoint_ != nullptr && checkpoint_->Has(key)) {
    FULCRUM_ASSIGN_OR_RETURN(value, checkpoint_->ReadWhole(key));
  } else {
    FULCRUM_ASSIGN_OR_RETURN(value, BaseValue(name));
  }
  if (value.sizes() != spec->tensor.sizes()) {
    return absl::DataLossError(absl::StrCat("tensor ", name, " has shape ",
                                            ShapeString(value.sizes()), ", the model expects ",
                                            ShapeString(spec->tensor.sizes())));
  }
  return value.to(dtype_);
}

absl::StatusOr<lora::AdapterValues> ExportSource::Adapter(const std::string& module_path) {
  if (checkpoint_ == nullptr) return peft_.at(module_path);
  lora::AdapterValues values;
  values.module_path = module_path;
  FULCRUM_ASSIGN_OR_RETURN(
      values.a, checkpoint_->ReadWhole(absl::StrCat(kModel, module_path, ".lora_A.weight")));
  FULCRUM_ASSIGN_OR_RETURN(
      values.b, checkpoint_->ReadWhole(absl::StrCat(kModel, module_path, ".lora_B.weight")));
  return values;
}

absl::StatusOr<torch::Tensor> ExportSource::MergedValue(const std::string& name) {
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor value, Value(name));
  if (!absl::EndsWith(name, kWeight)) return value;
  const std::string module = name.substr(0, name.size() - kWeight.size());
  if (std::find(adapted_.begin(), adapted_.end(), module) == adapted_.end()) return value;
  FULCRUM_ASSIGN_OR_RETURN(const lora::AdapterValues adapter, Adapter(module));
  // Value() may view the base file: merge into a copy.
  return value.clone().add_(
      lora::LoraDelta(adapter.a, adapter.b, lora_spec_.Scaling(), value.scalar_type()));
}

uint64_t ExportSource::checkpoint_bytes_read() const {
  return checkpoint_ == nullptr ? 0 : checkpoint_->bytes_read();
}

}  // namespace fulcrum::exporter
