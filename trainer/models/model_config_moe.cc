// The mixture-of-experts, multi-head latent attention, multi-token prediction
// and FP8 keys of an HF config.json (key names and defaults of transformers
// 4.57.6's configuration_{mixtral,qwen2_moe,qwen3_moe,deepseek_v2,deepseek_v3}.py).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "trainer/models/config_json.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {
namespace {

using config_json::GetBoolOr;
using config_json::GetDoubleOr;
using config_json::GetInt;
using config_json::GetIntOr;
using config_json::GetStringOr;
using config_json::Has;
using config_json::Json;
using config_json::KeyError;

// A key whose JSON null means "off" (0) while its absence means the default
// (DeepSeek q_lora_rank, n_shared_experts, n_group, topk_group).
absl::StatusOr<int64_t> GetIntNullIsZero(const Json& json, const std::string& key, int64_t fallback,
                                         const std::string& source) {
  if (json.contains(key) && json.at(key).is_null()) return 0;
  return GetIntOr(json, key, fallback, source);
}

absl::Status ParseMixtral(const Json& json, const std::string& source, ModelConfig* c) {
  MoeConfig& moe = c->moe;
  FULCRUM_ASSIGN_OR_RETURN(moe.num_experts, GetIntOr(json, "num_local_experts", 8, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.experts_per_token, GetIntOr(json, "num_experts_per_tok", 2, source));
  moe.expert_intermediate_size = c->intermediate_size;  // Mixtral's experts are the FFN
  moe.normalize_weights = true;  // softmax over the selected logits == renormalised top-k
  FULCRUM_ASSIGN_OR_RETURN(moe.router_aux_loss_coef,
                           GetDoubleOr(json, "router_aux_loss_coef", 0.001, source));
  return absl::OkStatus();
}

absl::Status ParseQwenMoe(const Json& json, const std::string& source, ModelConfig* c) {
  MoeConfig& moe = c->moe;
  const bool qwen2 = c->model_type == "qwen2_moe";
  FULCRUM_ASSIGN_OR_RETURN(moe.num_experts,
                           GetIntOr(json, "num_experts", qwen2 ? 60 : 128, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.experts_per_token,
                           GetIntOr(json, "num_experts_per_tok", qwen2 ? 4 : 8, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.expert_intermediate_size,
                           GetIntOr(json, "moe_intermediate_size", qwen2 ? 1408 : 768, source));
  if (qwen2) {
    FULCRUM_ASSIGN_OR_RETURN(moe.shared_intermediate_size,
                             GetIntOr(json, "shared_expert_intermediate_size", 5632, source));
    if (moe.shared_intermediate_size < 0) {
      return KeyError(source, "shared_expert_intermediate_size", "must be >= 0");
    }
    moe.num_shared_experts = moe.shared_intermediate_size > 0 ? 1 : 0;
    moe.shared_expert_gate = moe.shared_intermediate_size > 0;
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.normalize_weights, GetBoolOr(json, "norm_topk_prob", false, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.decoder_sparse_step,
                           GetIntOr(json, "decoder_sparse_step", 1, source));
  if (moe.decoder_sparse_step < 1) {
    return KeyError(source, "decoder_sparse_step",
                    absl::StrCat("must be >= 1, got ", moe.decoder_sparse_step));
  }
  if (Has(json, "mlp_only_layers")) {
    const Json& layers = json.at("mlp_only_layers");
    if (!layers.is_array())
      return KeyError(source, "mlp_only_layers", "expected a list of integers");
    for (const Json& layer : layers) {
      if (!layer.is_number_integer() || layer.get<int64_t>() < 0) {
        return KeyError(source, "mlp_only_layers",
                        absl::StrCat("expected layer indices >= 0, got ", layer.dump()));
      }
      moe.mlp_only_layers.push_back(layer.get<int64_t>());
    }
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.router_aux_loss_coef,
                           GetDoubleOr(json, "router_aux_loss_coef", 0.001, source));
  return absl::OkStatus();
}

// DeepSeek-V2 (softmax; greedy or group_limited_greedy; no renormalisation:
// transformers 4.57 ignores norm_topk_prob) and V3 (sigmoid, noaux_tc with
// the correction bias, norm_topk_prob honoured). Both: MoE from layer
// first_k_dense_replace on.
absl::Status ParseDeepSeekMoe(const Json& json, const std::string& source, ModelConfig* c) {
  MoeConfig& moe = c->moe;
  const bool v3 = c->model_type == "deepseek_v3";
  FULCRUM_ASSIGN_OR_RETURN(moe.num_experts,
                           GetIntOr(json, "n_routed_experts", v3 ? 256 : 64, source));
  if (v3) {
    FULCRUM_ASSIGN_OR_RETURN(moe.experts_per_token,
                             GetIntOr(json, "num_experts_per_tok", 8, source));
  } else {
    FULCRUM_ASSIGN_OR_RETURN(moe.experts_per_token, GetInt(json, "num_experts_per_tok", source));
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.expert_intermediate_size,
                           GetIntOr(json, "moe_intermediate_size", v3 ? 2048 : 1407, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.num_shared_experts,
                           GetIntNullIsZero(json, "n_shared_experts", v3 ? 1 : 2, source));
  if (moe.num_shared_experts < 0) return KeyError(source, "n_shared_experts", "must be >= 0");
  moe.shared_intermediate_size = moe.num_shared_experts * moe.expert_intermediate_size;
  FULCRUM_ASSIGN_OR_RETURN(moe.first_k_dense_replace,
                           GetIntOr(json, "first_k_dense_replace", v3 ? 3 : 0, source));
  if (moe.first_k_dense_replace < 0)
    return KeyError(source, "first_k_dense_replace", "must be >= 0");
  FULCRUM_ASSIGN_OR_RETURN(moe.moe_layer_freq, GetIntOr(json, "moe_layer_freq", 1, source));
  if (moe.moe_layer_freq < 1) {
    return KeyError(source, "moe_layer_freq",
                    absl::StrCat("must be >= 1, got ", moe.moe_layer_freq));
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.n_group, GetIntNullIsZero(json, "n_group", v3 ? 8 : 1, source));
  FULCRUM_ASSIGN_OR_RETURN(moe.topk_group,
                           GetIntNullIsZero(json, "topk_group", v3 ? 4 : 1, source));
  if (moe.n_group == 0) moe.n_group = 1;  // null: no groups
  if (moe.topk_group == 0) moe.topk_group = moe.n_group;
  FULCRUM_ASSIGN_OR_RETURN(moe.topk_method,
                           GetStringOr(json, "topk_method", v3 ? "noaux_tc" : "greedy", source));
  FULCRUM_ASSIGN_OR_RETURN(moe.scoring,
                           GetStringOr(json, "scoring_func", v3 ? "sigmoid" : "softmax", source));
  // transformers 4.57 hard-codes each version's scoring and selection.
  const std::string method_ok = v3 ? "noaux_tc" : "greedy, group_limited_greedy";
  if (v3 ? moe.topk_method != "noaux_tc"
         : moe.topk_method != "greedy" && moe.topk_method != "group_limited_greedy") {
    return KeyError(source, "topk_method",
                    absl::StrCat("unknown or not supported for ", c->model_type, ": \"",
                                 moe.topk_method, "\" (supported: ", method_ok, ")"));
  }
  const std::string scoring_ok = v3 ? "sigmoid" : "softmax";
  if (moe.scoring != scoring_ok) {
    return KeyError(source, "scoring_func",
                    absl::StrCat("unknown or not supported for ", c->model_type, ": \"",
                                 moe.scoring, "\" (supported: ", scoring_ok, ")"));
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.normalize_weights, GetBoolOr(json, "norm_topk_prob", v3, source));
  if (!v3 && moe.normalize_weights) {
    return KeyError(source, "norm_topk_prob",
                    "not supported yet: true with deepseek_v2 (transformers 4.57 ignores it, "
                    "DeepSeek's own code renormalises: the reference is ambiguous)");
  }
  FULCRUM_ASSIGN_OR_RETURN(moe.routed_scaling_factor,
                           GetDoubleOr(json, "routed_scaling_factor", v3 ? 2.5 : 1.0, source));
  if (!(moe.routed_scaling_factor > 0.0))
    return KeyError(source, "routed_scaling_factor", "must be > 0");
  moe.correction_bias = v3;
  FULCRUM_ASSIGN_OR_RETURN(moe.router_aux_loss_coef,
                           GetDoubleOr(json, "aux_loss_alpha", 0.0, source));
  return absl::OkStatus();
}

absl::Status ParseMla(const Json& json, const std::string& source, ModelConfig* c) {
  MlaConfig& mla = c->mla;
  FULCRUM_ASSIGN_OR_RETURN(mla.q_lora_rank, GetIntNullIsZero(json, "q_lora_rank", 1536, source));
  FULCRUM_ASSIGN_OR_RETURN(mla.kv_lora_rank, GetIntOr(json, "kv_lora_rank", 512, source));
  FULCRUM_ASSIGN_OR_RETURN(mla.qk_nope_head_dim, GetIntOr(json, "qk_nope_head_dim", 128, source));
  FULCRUM_ASSIGN_OR_RETURN(mla.qk_rope_head_dim, GetIntOr(json, "qk_rope_head_dim", 64, source));
  FULCRUM_ASSIGN_OR_RETURN(mla.v_head_dim, GetIntOr(json, "v_head_dim", 128, source));
  // DeepSeek-V3 configs may store the rope dims as halves (rope_interleave
  // false); V2 checkpoints are always interleaved pairs.
  FULCRUM_ASSIGN_OR_RETURN(mla.rope_interleave, GetBoolOr(json, "rope_interleave", true, source));
  if (mla.q_lora_rank < 0) return KeyError(source, "q_lora_rank", "must be > 0 or null");
  const std::pair<const char*, int64_t> dims[] = {{"kv_lora_rank", mla.kv_lora_rank},
                                                  {"qk_nope_head_dim", mla.qk_nope_head_dim},
                                                  {"qk_rope_head_dim", mla.qk_rope_head_dim},
                                                  {"v_head_dim", mla.v_head_dim}};
  for (const auto& [key, value] : dims) {
    if (value <= 0) return KeyError(source, key, absl::StrCat("must be > 0, got ", value));
  }
  if (mla.qk_rope_head_dim % 2 != 0) {
    return KeyError(source, "qk_rope_head_dim",
                    absl::StrCat("must be even for RoPE, got ", mla.qk_rope_head_dim));
  }
  // As HF sets them: the rope tables are qk_rope_head_dim wide, and every
  // head has its own keys and values (decompressed from the latent).
  c->head_dim = mla.qk_rope_head_dim;
  c->num_kv_heads = c->num_heads;
  FULCRUM_ASSIGN_OR_RETURN(c->num_mtp_layers,
                           GetIntOr(json, "num_nextn_predict_layers", 0, source));
  if (c->num_mtp_layers < 0) return KeyError(source, "num_nextn_predict_layers", "must be >= 0");
  return absl::OkStatus();
}

// The routing arithmetic every family shares.
absl::Status ValidateMoe(const MoeConfig& moe, const std::string& source,
                         const std::string& experts_key) {
  if (moe.num_experts < 1) {
    return KeyError(source, experts_key, absl::StrCat("must be >= 1, got ", moe.num_experts));
  }
  if (moe.experts_per_token < 1 || moe.experts_per_token > moe.num_experts) {
    return KeyError(source, "num_experts_per_tok",
                    absl::StrCat("top-k ", moe.experts_per_token, " must be in [1, ", experts_key,
                                 " = ", moe.num_experts, "]"));
  }
  if (moe.expert_intermediate_size < 1) {
    return KeyError(source,
                    moe.style == MoeStyle::kMixtral ? "intermediate_size" : "moe_intermediate_size",
                    absl::StrCat("must be > 0, got ", moe.expert_intermediate_size));
  }
  if (moe.n_group < 1 || moe.num_experts % moe.n_group != 0) {
    return KeyError(
        source, "n_group",
        absl::StrCat(moe.n_group, " must be >= 1 and divide ", experts_key, " ", moe.num_experts));
  }
  if (moe.topk_group < 1 || moe.topk_group > moe.n_group) {
    return KeyError(source, "topk_group",
                    absl::StrCat(moe.topk_group, " must be in [1, n_group = ", moe.n_group, "]"));
  }
  const bool grouped = moe.topk_method == "group_limited_greedy" || moe.topk_method == "noaux_tc";
  const int64_t reachable = moe.topk_group * (moe.num_experts / moe.n_group);
  if (grouped && moe.experts_per_token > reachable) {
    return KeyError(source, "num_experts_per_tok",
                    absl::StrCat("top-k ", moe.experts_per_token, " > topk_group ", moe.topk_group,
                                 " x experts per group ", moe.num_experts / moe.n_group, " = ",
                                 reachable, " (the experts the kept groups hold)"));
  }
  return absl::OkStatus();
}

absl::Status ParseQuantization(const Json& json, const std::string& source, ModelConfig* c) {
  if (!Has(json, "quantization_config")) return absl::OkStatus();
  const Json& q = json.at("quantization_config");
  if (!q.is_object()) return KeyError(source, "quantization_config", "expected an object");
  const std::string prefix = source + ": quantization_config";
  FULCRUM_ASSIGN_OR_RETURN(const std::string method, GetStringOr(q, "quant_method", "", prefix));
  if (method != "fp8") {
    return KeyError(source, "quantization_config.quant_method",
                    absl::StrCat("not supported yet: \"", method, "\" (supported: \"fp8\")"));
  }
  FULCRUM_ASSIGN_OR_RETURN(const std::string fmt, GetStringOr(q, "fmt", "e4m3", prefix));
  if (fmt != "e4m3") {
    return KeyError(source, "quantization_config.fmt",
                    absl::StrCat("not supported yet: \"", fmt, "\" (supported: \"e4m3\")"));
  }
  const Json* block = q.contains("weight_block_size") ? &q.at("weight_block_size") : nullptr;
  if (block == nullptr || !block->is_array() || block->size() != 2 ||
      !block->at(0).is_number_integer() || !block->at(1).is_number_integer() ||
      block->at(0).get<int64_t>() <= 0 || block->at(1).get<int64_t>() <= 0) {
    return KeyError(source, "quantization_config.weight_block_size",
                    absl::StrCat("expected [rows, cols] > 0 (per-block scales), got ",
                                 block == nullptr ? "nothing" : block->dump()));
  }
  c->fp8_block_rows = block->at(0).get<int64_t>();
  c->fp8_block_cols = block->at(1).get<int64_t>();
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseMoeKeys(const FamilySpec& family, const nlohmann::json& json,
                          const std::string& source, ModelConfig* config) {
  config->moe.style = family.moe_style;
  std::string experts_key;
  switch (family.moe_style) {
    case MoeStyle::kNone:
      break;
    case MoeStyle::kMixtral:
      experts_key = "num_local_experts";
      FULCRUM_RETURN_IF_ERROR(ParseMixtral(json, source, config));
      break;
    case MoeStyle::kQwenMoe:
      experts_key = "num_experts";
      FULCRUM_RETURN_IF_ERROR(ParseQwenMoe(json, source, config));
      break;
    case MoeStyle::kDeepSeek:
      experts_key = "n_routed_experts";
      FULCRUM_RETURN_IF_ERROR(ParseDeepSeekMoe(json, source, config));
      break;
  }
  if (family.moe_style != MoeStyle::kNone) {
    FULCRUM_RETURN_IF_ERROR(ValidateMoe(config->moe, source, experts_key));
  }
  if (family.latent_attention) FULCRUM_RETURN_IF_ERROR(ParseMla(json, source, config));
  return ParseQuantization(json, source, config);
}

bool IsMoeLayer(const ModelConfig& config, int64_t layer) {
  const MoeConfig& moe = config.moe;
  if (!moe.enabled()) return false;
  switch (moe.style) {
    case MoeStyle::kNone:
      return false;
    case MoeStyle::kMixtral:
      return true;
    case MoeStyle::kQwenMoe:
      return std::find(moe.mlp_only_layers.begin(), moe.mlp_only_layers.end(), layer) ==
                 moe.mlp_only_layers.end() &&
             (layer + 1) % moe.decoder_sparse_step == 0;
    case MoeStyle::kDeepSeek:
      return layer >= moe.first_k_dense_replace && layer % moe.moe_layer_freq == 0;
  }
  return false;
}

}  // namespace fulcrum::models
