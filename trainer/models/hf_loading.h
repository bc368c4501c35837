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

// Choices the recipe makes about a checkpoint's extra contents.
struct HfLoadOptions {
  // DeepSeek-V3 multi-token-prediction layers (model.layers.<i>, i >=
  // num_layers, config num_nextn_predict_layers > 0): dropped when true (the
  // recipe's model.mtp_layers: skip), else "unexpected tensors".
  bool skip_mtp_layers = false;
};

// Copies every base parameter and persistent buffer (names ending in
// "e_score_correction_bias") from an HF checkpoint (converting dtype); missing
// tensors, shape mismatches and unexpected tensors (other than known-ignorable
// ones such as rotary inv_freq) are errors naming the tensor and the dir.
// FP8 checkpoints (quantization_config fp8, weight_block_size [r, c]): an
// "F8_E4M3" weight W [out, in] with "<name>_scale_inv" S [ceil(out/r),
// ceil(in/c)] (fp32) loads as decode(W) * S per r x c block (the last blocks
// may be partial), in the parameter's dtype; a missing or misshapen scale is
// an error naming the tensor and the file. Adapter (lora_*) parameters are not
// touched. Nothing is copied unless every check passes.
absl::Status LoadHfWeights(CausalLMImpl& model, const checkpoint::HfWeights& weights,
                           const HfLoadOptions& options = {});

// The whole value of the checkpoint tensor `name`: a view in its stored
// dtype, or for an F8_E4M3 weight its dequantized fp32 value (as
// LoadHfWeights loads it). Errors name the tensor and the file.
absl::StatusOr<torch::Tensor> ReadHfTensor(const checkpoint::HfWeights& weights,
                                           const std::string& name, const ModelConfig& config);

// Base parameters and persistent buffers under their HF names (no lora_*
// tensors; no lm_head when tied), in a stable order (HF's state_dict order:
// per module its parameters, then its buffers, then its children). The
// tensors are detached aliases (no copy).
std::vector<checkpoint::NamedTensor> HfStateDict(CausalLMImpl& model);

// Whether the buffer `name` belongs in checkpoints (HF persistent buffers):
// DeepSeek-V3's "...gate.e_score_correction_bias".
bool IsPersistentBuffer(const std::string& name);

// `block` [ceil(out/rows), ceil(in/cols)] scales expanded to one per element
// of a [out, in] weight: [out, in].
torch::Tensor ExpandBlockScales(const torch::Tensor& block, int64_t out, int64_t in, int64_t rows,
                                int64_t cols);

// `fulcrum init`: reads config.json, builds the model in fp32,
// InitializeWeights(seed), writes out_dir/config.json (the input unchanged,
// except that a quantization_config is dropped: the weights are not FP8) +
// model.safetensors (via checkpoint::WriteHfWeights). out_dir is created if
// missing.
absl::Status WriteRandomModel(const std::string& config_json_path, const std::string& out_dir,
                              uint64_t seed);

}  // namespace fulcrum::models
