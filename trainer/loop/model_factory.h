// Builds the model a command works on: config from the HF directory (or a
// config.json for random init), parameters in the run's dtype on its device,
// weights loaded or initialised, LoRA attached when the recipe asks.
#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

struct ModelRequest {
  std::string path;    // HF model directory; or
  std::string config;  // config.json for random init
  torch::ScalarType dtype = torch::kFloat;
  torch::Device device = torch::kCPU;
  uint64_t seed = 0;               // random init only
  models::ModelParallel parallel;  // this rank's tp shard (none: the whole model)
  models::HfLoadOptions load;      // e.g. recipe model.mtp_layers: skip
};

struct BuiltModel {
  models::ModelConfig config;
  models::CausalLM model{nullptr};
  std::string source_dir;  // the HF directory it came from ("" for random init)
};

// Under tensor parallelism each rank reads only its slices of the checkpoint;
// a random init is drawn for the whole model and cut, so every layout starts
// from the same weights.
absl::StatusOr<BuiltModel> BuildModel(const ModelRequest& request);

// config.json of model.path, or model.config.
absl::StatusOr<models::ModelConfig> LoadRequestedConfig(const recipe::ModelSection& model);

// "fp32" | "bf16" -> scalar type (validated by the recipe).
torch::ScalarType ParamDtype(const recipe::PrecisionSection& precision);

lora::LoraOptions LoraOptionsFrom(const recipe::LoraSection& section);

}  // namespace fulcrum::loop
