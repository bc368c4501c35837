// The parts of a Hugging Face model directory besides its weights:
// config.json, and from the source model directory generation_config.json
// and the tokenizer files. (trainer/export writes whole directories.)
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::checkpoint {

// Writes dir/config.json, `config` with its quantization_config dropped (the
// weights written are never FP8) and its dtype ("dtype" for transformers
// 4.56+, "torch_dtype" before) set to `written` when given, then copies
// HfSideFiles() present in `source_dir` ("" = none) into `dir`.
absl::Status WriteHfConfigAndSideFiles(const std::string& dir, nlohmann::json config,
                                       std::optional<torch::ScalarType> written,
                                       const std::string& source_dir);

// Files other than weights and config that a model directory carries along.
const std::vector<std::string>& HfSideFiles();

// "fp32"/"float32" -> kFloat, "bf16"/"bfloat16" -> kBFloat16, "fp16"/"float16"
// -> kHalf, "auto"/"" -> unset.
absl::StatusOr<std::optional<torch::ScalarType>> ParseExportDtype(const std::string& text);

}  // namespace fulcrum::checkpoint
