// ModelConfig: the part of an HF config.json that builds a decoder (dense:
// Llama, Mistral, Qwen2, Qwen3; mixture-of-experts: Mixtral, Qwen2-MoE,
// Qwen3-MoE, DeepSeek-V2/V3 with multi-head latent attention), parsed and
// validated once.
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
  std::string type;  // "" (none) | "llama3" | "linear" | "yarn"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn (HF _compute_yarn_parameters; DeepSeek-V2/V3 configs): the keys as
  // read, 0 = absent (the defaults are applied where they are used).
  double beta_fast = 0.0, beta_slow = 0.0;
  double mscale = 0.0, mscale_all_dim = 0.0;
  double attention_factor = 0.0;  // explicit "attention_factor"; 0 = derived from mscale
  bool truncate = true;
};

// Multi-head latent attention (DeepSeek-V2/V3). Disabled (kv_lora_rank 0)
// for every other family.
struct MlaConfig {
  int64_t q_lora_rank = 0;  // 0 (config null): a plain q_proj instead of q_a/q_b
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // RoPE on the pairs (x[2i], x[2i+1]) (DeepSeek-V2 always; V3 config
  // rope_interleave, default true) or HF's rotate_half halves (V3 with
  // rope_interleave false).
  bool rope_interleave = true;
  bool enabled() const { return kv_lora_rank > 0; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

// The mixture-of-experts part of a config.json (num_experts 0 = dense).
struct MoeConfig {
  MoeStyle style = MoeStyle::kNone;
  int64_t num_experts = 0;               // num_local_experts | num_experts | n_routed_experts
  int64_t experts_per_token = 0;         // num_experts_per_tok (top-k)
  int64_t expert_intermediate_size = 0;  // moe_intermediate_size (Mixtral: intermediate_size)
  // DeepSeek: n_shared_experts, run as ONE MLP of n * moe_intermediate_size.
  // Qwen2-MoE: 1 when shared_expert_intermediate_size > 0.
  int64_t num_shared_experts = 0;
  int64_t shared_intermediate_size = 0;  // the shared MLP's whole width (0 = none)
  bool shared_expert_gate = false;  // Qwen2-MoE: sigmoid(Linear(hidden, 1)) on the shared output
  std::string scoring = "softmax";  // scoring_func: softmax | sigmoid
  // topk_method: "greedy" (plain top-k), "group_limited_greedy" (V2: groups
  // ranked by their max score), "noaux_tc" (V3: groups ranked by the sum of
  // their top-2 biased scores, experts chosen by score + correction bias).
  std::string topk_method = "greedy";
  int64_t n_group = 1, topk_group = 1;
  bool normalize_weights = false;  // norm_topk_prob (Mixtral: always)
  double routed_scaling_factor = 1.0;
  bool correction_bias = false;  // gate.e_score_correction_bias buffer (noaux_tc)
  // Which layers are MoE: DeepSeek: i >= first_k_dense_replace and
  // i % moe_layer_freq == 0; Qwen-MoE: i not in mlp_only_layers and
  // (i + 1) % decoder_sparse_step == 0; Mixtral: every layer.
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  double router_aux_loss_coef = 0.0;  // router_aux_loss_coef | aux_loss_alpha (as read)
  bool enabled() const { return num_experts > 0; }
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
  // Mixture of experts and latent attention (issue 6). For MLA families
  // head_dim is qk_rope_head_dim (the width the rope tables are built for, as
  // HF sets it) and num_kv_heads = num_heads.
  MoeConfig moe;
  MlaConfig mla;
  // DeepSeek-V3 num_nextn_predict_layers: multi-token-prediction layers stored
  // after the num_layers decoder layers (model.layers.<num_layers + i>.*).
  int64_t num_mtp_layers = 0;
  // quantization_config {"quant_method": "fp8", "weight_block_size": [r, c]}:
  // float8_e4m3fn weights with "<name>_scale_inv" [ceil(out/r), ceil(in/c)]
  // fp32 (dequantized at load). {0, 0} = not quantized.
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;
};

// Whether decoder layer `layer` has a MoE block (else a dense MLP of
// intermediate_size), per MoeConfig's rule for the family.
bool IsMoeLayer(const ModelConfig& config, int64_t layer);

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
