// PEFT (Hugging Face `peft`) LoRA adapter directories: adapter_config.json +
// adapter_model.safetensors, keys "base_model.model.<module path>.lora_A.weight".
//
// Defines: AdapterValues, AdapterStateDict, WritePeftAdapter, WritePeftAdapterFiles,
// PeftAdapter, ReadPeftAdapter, LoadPeftAdapter.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/lora/apply_lora.h"

namespace fulcrum::lora {

// The PEFT key of an adapter matrix: "base_model.model." + path + ".lora_A.weight".
std::string PeftKey(const std::string& module_path, bool lora_b);

// Adapter tensors (live, detached: lora_A [r, in], lora_B [out, r]) under PEFT keys.
// Under tensor parallelism these are this rank's shards; models::
// GatherFullStateDict(model, true) gives the full ones.
std::vector<checkpoint::NamedTensor> AdapterStateDict(torch::nn::Module& model);

// One adapter's full matrices: a [r, in], b [out, r].
struct AdapterValues {
  std::string module_path;  // "model.layers.0.self_attn.q_proj"
  torch::Tensor a, b;
};

// Writes dir/adapter_config.json (peft_type LORA, task_type CAUSAL_LM, r,
// lora_alpha, lora_dropout, target_modules = sorted adapted names, use_rslora,
// bias "none", fan_in_fan_out false, inference_mode true,
// base_model_name_or_path, modules_to_save null, ...) and
// dir/adapter_model.safetensors (AdapterStateDict). Creates dir. A model
// without adapters -> FailedPrecondition.
absl::Status WritePeftAdapter(torch::nn::Module& model, const LoraOptions& options,
                              const std::string& base_model_path, const std::string& dir);

// The same directory from adapters given as tensors (an exporter streaming
// from a checkpoint has no model); none -> FailedPrecondition.
absl::Status WritePeftAdapterFiles(const std::vector<AdapterValues>& adapters, const LoraSpec& spec,
                                   const std::string& base_model_path, const std::string& dir);

// An adapter directory read and checked against `model`'s layers as
// LoadPeftAdapter does, without changing the model (a meta-device model will
// do: only the layers' sizes are used).
struct PeftAdapter {
  LoraOptions options;                  // targets = sorted adapted names
  std::vector<AdapterValues> adapters;  // in the model's layer order
};
absl::StatusOr<PeftAdapter> ReadPeftAdapter(
    torch::nn::Module& model, const std::string& dir,
    const std::function<bool(const std::string& module_path)>& held_elsewhere = nullptr);

// Reads a PEFT adapter dir: adapter_config.json (r, lora_alpha, lora_dropout,
// use_rslora, target_modules as a list of names or a regex string fully
// matched against module paths), attaches adapters, loads lora_A/lora_B (keys
// with or without ".default"), checking shapes, and freezes base params.
// Everything is validated before the model is touched. Errors name the file
// and the key or tensor. Shapes are checked against the full layer; under
// tensor parallelism each rank keeps its slice (LoraLinear::LocalLoraA/B). Returns the options
// (targets = sorted adapted names). `held_elsewhere(module_path)`, when
// given, names the module paths another pipeline stage holds: their tensors
// in the file are skipped instead of being unexpected.
absl::StatusOr<LoraOptions> LoadPeftAdapter(
    torch::nn::Module& model, const std::string& dir,
    const std::function<bool(const std::string& module_path)>& held_elsewhere = nullptr);

}  // namespace fulcrum::lora
