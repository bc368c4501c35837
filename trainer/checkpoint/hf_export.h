// Writes a Hugging Face model directory: config.json, the weights (one
// safetensors file, or shards with model.safetensors.index.json), and from the
// source model directory generation_config.json and the tokenizer files.
// The directory appears only when complete (staged, then renamed).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::checkpoint {

struct HfExportOptions {
  std::string out_dir;
  std::string source_dir;                  // "" when the model was not loaded from a directory
  std::optional<torch::ScalarType> dtype;  // unset: keep each tensor's dtype
  int64_t max_shard_bytes = int64_t{5} << 30;
};

absl::Status ExportHfModel(const std::vector<NamedTensor>& weights, nlohmann::json config,
                           const HfExportOptions& options);

// Files other than weights and config that a model directory carries along.
const std::vector<std::string>& HfSideFiles();

// "fp32"/"float32" -> kFloat, "bf16"/"bfloat16" -> kBFloat16, "fp16"/"float16"
// -> kHalf, "auto"/"" -> unset.
absl::StatusOr<std::optional<torch::ScalarType>> ParseExportDtype(const std::string& text);

}  // namespace fulcrum::checkpoint
