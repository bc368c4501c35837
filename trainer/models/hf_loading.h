// Hugging Face checkpoints <-> CausalLM parameters. Parameter names are the
// HF keys, so loading and exporting are name-for-name copies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/models/causal_lm.h"

namespace fulcrum::models {

// Copies every base parameter from an HF checkpoint (converting dtype); missing
// tensors, shape mismatches and unexpected tensors (other than known-ignorable
// ones such as rotary inv_freq) are errors naming the tensor and the dir.
// Adapter (lora_*) parameters are not touched. Nothing is copied unless every
// check passes.
absl::Status LoadHfWeights(CausalLMImpl& model, const checkpoint::HfWeights& weights);

// Base parameters under their HF names (no lora_* tensors; no lm_head when
// tied), in a stable order (HF's named_parameters order). The tensors are
// detached aliases of the parameters (no copy).
std::vector<checkpoint::NamedTensor> HfStateDict(CausalLMImpl& model);

// `fulcrum init`: reads config.json, builds the model in fp32,
// InitializeWeights(seed), writes out_dir/config.json (the input unchanged) +
// model.safetensors (via checkpoint::WriteHfWeights). out_dir is created if
// missing.
absl::Status WriteRandomModel(const std::string& config_json_path, const std::string& out_dir,
                              uint64_t seed);

}  // namespace fulcrum::models
