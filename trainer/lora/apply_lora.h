// Attaching LoRA adapters to a model's LoraLinear layers, freezing the base,
// and folding adapters back into the base weights.
//
// Defines: LoraOptions, LoraLayer, LoraLayers, ApplyLora, MergeLora.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/lora/lora_linear.h"

namespace fulcrum::lora {

struct LoraOptions {
  LoraSpec spec;  // rank, alpha, dropout, rslora
  std::vector<std::string>
      targets;  // last component of the module path ("q_proj"), or "all-linear"
  // Set: each adapter's A is drawn from a CPU generator seeded with
  // AdapterSeed(*seed, module path), so its values do not depend on which
  // other modules exist (a pipeline stage draws what the whole model draws).
  // Unset: from the global generator in module order.
  std::optional<uint64_t> seed;

  // A copy with `seed` set (one-expression use at call sites).
  LoraOptions WithSeed(uint64_t value) const {
    LoraOptions out = *this;
    out.seed = value;
    return out;
  }
};

// The seed of the adapter at `module_path`: FNV-1a 64 of the path, mixed with
// `seed` (stable across platforms and runs).
uint64_t AdapterSeed(uint64_t seed, const std::string& module_path);

// One LoraLinear of a model and its module path ("model.layers.0.self_attn.q_proj").
struct LoraLayer {
  std::string path;
  LoraLinearImpl* layer = nullptr;  // owned by the model
};

// Every LoraLinear under `model` (the model itself included), in
// registration order.
std::vector<LoraLayer> LoraLayers(torch::nn::Module& model);

// The last component of a module path ("model.layers.0.mlp.up_proj" -> "up_proj").
std::string LastComponent(const std::string& path);

// Checks rank > 0, alpha > 0 and dropout in [0, 1); errors name
// finetune.lora.<key>.
absl::Status ValidateLoraSpec(const LoraSpec& spec);

// Whether `targets` (finetune.lora.targets) select the LoraLinear at module
// `path`: its last component named, or "all-linear" and it is neither
// lm_head nor a MoE router ("gate"), which are adapted only when named.
bool TargetsSelect(const std::vector<std::string>& targets, const std::string& path);

// Attaches adapters to every LoraLinear whose name's last component is in
// targets ("all-linear": every LoraLinear except lm_head and the MoE routers,
// "gate", which are adapted only when named), then freezes every
// non-adapter parameter (requires_grad false). A target matching no module ->
// InvalidArgument "finetune.lora.targets: 'qproj' matches no linear layer
// (available: down_proj, gate_proj, ...)". A layer that already has an
// adapter -> FailedPrecondition. Returns the number of adapted layers.
absl::StatusOr<int64_t> ApplyLora(torch::nn::Module& model, const LoraOptions& options);

// Attaches `spec` adapters to the layers for which `select(path)` is true and
// freezes the rest, as ApplyLora. Returns the number of adapted layers.
// `seed`: as LoraOptions::seed.
absl::StatusOr<int64_t> ApplyLoraWhere(torch::nn::Module& model, const LoraSpec& spec,
                                       const std::function<bool(const std::string&)>& select,
                                       std::optional<uint64_t> seed = std::nullopt);

// Sets requires_grad = true on adapter matrices and false on everything else.
void FreezeAllButAdapters(torch::nn::Module& model);

// Folds every adapter into its base weight (W += scaling * B A) and removes
// the adapters. Base parameters keep their requires_grad.
void MergeLora(torch::nn::Module& model);

}  // namespace fulcrum::lora
