// ModelConfig: the part of an HF config.json that builds a dense decoder
// (Llama, Mistral, Qwen2, Qwen3), parsed and validated once.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/models/family_registry.h"

namespace fulcrum::models {

struct RopeScaling {
  std::string type;  // "" (none) | "llama3" | "linear"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

struct ModelConfig {
  std::string model_type;    // llama | mistral | qwen2 | qwen3
  std::string architecture;  // e.g. LlamaForCausalLM
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0, max_position_embeddings = 0;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0, initializer_range = 0.02;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (Qwen2 always; Llama per config)
  bool qk_norm = false;         // Qwen3 per-head RMSNorm on q and k
  RopeScaling rope_scaling;
  nlohmann::json raw;  // the config.json as read (exported unchanged)
  // Added beyond the first API:
  bool o_proj_bias = false;    // Llama/Qwen3 attention_bias also covers o_proj
  bool mlp_bias = false;       // Llama mlp_bias: gate/up/down biases
  int64_t sliding_window = 0;  // 0 = full attention; > 0: CheckSequenceLength refuses
                               // sequences longer than it (not supported yet)
};

// Parses an HF config.json. Unsupported architecture -> InvalidArgument listing
// the supported ones (from the registry). rope_scaling of an unsupported type
// (yarn, dynamic, ...) -> "not supported yet: ...". Messages name the file and
// key.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& config_json_path);
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json, const std::string& source);

// seq_len > max_position_embeddings (without rope scaling) -> InvalidArgument
// naming both numbers. With rope scaling the limit is
// max(max_position_embeddings, factor * original_max_position_embeddings).
absl::Status CheckSequenceLength(const ModelConfig& config, int64_t seq_len);

}  // namespace fulcrum::models
