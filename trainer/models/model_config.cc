#include "trainer/models/model_config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/models/config_json.h"

namespace fulcrum::models {
namespace {

using config_json::GetBoolOr;
using config_json::GetDoubleOr;
using config_json::GetInt;
using config_json::GetIntOr;
using config_json::Has;
using config_json::Json;
using config_json::KeyError;

absl::StatusOr<bool> ResolvePresence(Presence presence, const std::string& key, bool fallback,
                                     const Json& json, const std::string& source) {
  switch (presence) {
    case Presence::kNever:
      return false;
    case Presence::kAlways:
      return true;
    case Presence::kFromConfig:
      return GetBoolOr(json, key, fallback, source);
  }
  return false;
}

// Finds the family from "architectures"[0] (or "model_type" when absent).
absl::StatusOr<const FamilySpec*> FindFamily(const Json& json, const std::string& source,
                                             std::string* architecture) {
  const std::string supported = absl::StrJoin(SupportedArchitectures(), ", ");
  if (!Has(json, "model_type") || !json.at("model_type").is_string()) {
    return KeyError(source, "model_type", "missing or not a string");
  }
  const std::string model_type = json.at("model_type").get<std::string>();
  const FamilySpec* family = nullptr;
  if (Has(json, "architectures")) {
    const Json& archs = json.at("architectures");
    if (!archs.is_array() || archs.empty() || !archs.at(0).is_string()) {
      return KeyError(source, "architectures", "expected a non-empty list of strings");
    }
    *architecture = archs.at(0).get<std::string>();
    family = FindFamilyByArchitecture(*architecture);
    if (family == nullptr) {
      return KeyError(
          source, "architectures",
          absl::StrCat("unsupported architecture ", *architecture, "; supported: ", supported));
    }
    if (family->model_type != model_type) {
      return KeyError(source, "model_type",
                      absl::StrCat("\"", model_type, "\" does not match architecture ",
                                   *architecture, " (expected \"", family->model_type, "\")"));
    }
    return family;
  }
  family = FindFamilyByModelType(model_type);
  if (family == nullptr) {
    return KeyError(source, "model_type",
                    absl::StrCat("unsupported model_type \"", model_type,
                                 "\" (supported: ", absl::StrJoin(SupportedModelTypes(), ", "),
                                 "; architectures: ", supported, ")"));
  }
  *architecture = family->architectures.front();
  return family;
}

// The yarn keys as read (0 = absent; defaults are applied where they are
// used, as HF's _compute_yarn_parameters does).
absl::Status ParseYarn(const Json& rs, const std::string& source, RopeScaling* scaling) {
  const std::string prefix = source + ": rope_scaling";
  const std::pair<const char*, double*> keys[] = {{"beta_fast", &scaling->beta_fast},
                                                  {"beta_slow", &scaling->beta_slow},
                                                  {"mscale", &scaling->mscale},
                                                  {"mscale_all_dim", &scaling->mscale_all_dim},
                                                  {"attention_factor", &scaling->attention_factor}};
  for (const auto& [key, field] : keys) {
    FULCRUM_ASSIGN_OR_RETURN(*field, GetDoubleOr(rs, key, 0.0, prefix));
    if (*field < 0.0) {
      return KeyError(source, absl::StrCat("rope_scaling.", key),
                      absl::StrCat("must be >= 0, got ", *field));
    }
  }
  if (scaling->beta_fast > 0.0 && scaling->beta_slow > 0.0 &&
      !(scaling->beta_fast > scaling->beta_slow)) {
    return KeyError(
        source, "rope_scaling.beta_fast",
        absl::StrCat("must be > beta_slow (", scaling->beta_fast, " <= ", scaling->beta_slow, ")"));
  }
  FULCRUM_ASSIGN_OR_RETURN(scaling->truncate, GetBoolOr(rs, "truncate", true, prefix));
  return absl::OkStatus();
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const Json& json, const std::string& source) {
  RopeScaling scaling;
  if (!Has(json, "rope_scaling")) return scaling;
  const Json& rs = json.at("rope_scaling");
  if (!rs.is_object()) return KeyError(source, "rope_scaling", "expected an object or null");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (Has(rs, key) && rs.at(key).is_string()) {
      type = rs.at(key).get<std::string>();
      break;
    }
  }
  if (type.empty()) return KeyError(source, "rope_scaling.rope_type", "missing");
  if (type == "default") return scaling;
  if (type != "llama3" && type != "linear" && type != "yarn") {
    return KeyError(
        source, "rope_scaling.rope_type",
        absl::StrCat("not supported yet: \"", type, "\" (supported: llama3, linear, yarn)"));
  }
  scaling.type = type;
  const std::string prefix = source + ": rope_scaling";
  FULCRUM_ASSIGN_OR_RETURN(scaling.factor, GetDoubleOr(rs, "factor", 0.0, prefix));
  if (!(scaling.factor >= 1.0)) return KeyError(source, "rope_scaling.factor", "missing or < 1");
  if (type == "llama3") {
    FULCRUM_ASSIGN_OR_RETURN(scaling.low_freq_factor,
                             GetDoubleOr(rs, "low_freq_factor", 0.0, prefix));
    FULCRUM_ASSIGN_OR_RETURN(scaling.high_freq_factor,
                             GetDoubleOr(rs, "high_freq_factor", 0.0, prefix));
    FULCRUM_ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                             GetInt(rs, "original_max_position_embeddings", prefix));
    if (!(scaling.low_freq_factor > 0.0) || !(scaling.high_freq_factor > scaling.low_freq_factor)) {
      return KeyError(source, "rope_scaling",
                      absl::StrCat("llama3 needs 0 < low_freq_factor (", scaling.low_freq_factor,
                                   ") < high_freq_factor (", scaling.high_freq_factor, ")"));
    }
    if (scaling.original_max_position_embeddings <= 0) {
      return KeyError(source, "rope_scaling.original_max_position_embeddings", "must be > 0");
    }
  } else {
    FULCRUM_ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                             GetIntOr(rs, "original_max_position_embeddings", 0, prefix));
    if (scaling.original_max_position_embeddings < 0) {
      return KeyError(source, "rope_scaling.original_max_position_embeddings", "must be >= 0");
    }
  }
  if (type == "yarn") FULCRUM_RETURN_IF_ERROR(ParseYarn(rs, source, &scaling));
  return scaling;
}

absl::Status ParseSlidingWindow(const FamilySpec& family, const Json& json,
                                const std::string& source, ModelConfig* config) {
  bool enabled = family.sliding_window_key;
  if (family.use_sliding_window_key) {
    FULCRUM_ASSIGN_OR_RETURN(enabled, GetBoolOr(json, "use_sliding_window", false, source));
  }
  if (!enabled) return absl::OkStatus();
  FULCRUM_ASSIGN_OR_RETURN(config->sliding_window, GetIntOr(json, "sliding_window", 0, source));
  if (config->sliding_window < 0) return KeyError(source, "sliding_window", "must be >= 0");
  return absl::OkStatus();
}

absl::Status Validate(const ModelConfig& c, const std::string& source) {
  const std::pair<const char*, int64_t> positives[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [key, value] : positives) {
    if (value <= 0) return KeyError(source, key, absl::StrCat("must be > 0, got ", value));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return KeyError(source, "num_key_value_heads",
                    absl::StrCat("num_attention_heads (", c.num_heads, ") % num_key_value_heads (",
                                 c.num_kv_heads, ") = ", c.num_heads % c.num_kv_heads, " != 0"));
  }
  if (c.head_dim % 2 != 0)
    return KeyError(source, "head_dim", absl::StrCat("must be even for RoPE, got ", c.head_dim));
  if (!(c.rms_norm_eps > 0.0)) return KeyError(source, "rms_norm_eps", "must be > 0");
  if (!(c.rope_theta > 0.0)) return KeyError(source, "rope_theta", "must be > 0");
  if (Has(c.raw, "hidden_act") && !(c.raw.at("hidden_act").is_string() &&
                                    c.raw.at("hidden_act").get<std::string>() == "silu")) {
    return KeyError(source, "hidden_act",
                    absl::StrCat("not supported yet: ", c.raw.at("hidden_act").dump(),
                                 " (supported: \"silu\")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json,
                                             const std::string& source) {
  if (!json.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));
  ModelConfig c;
  c.raw = json;
  FULCRUM_ASSIGN_OR_RETURN(const FamilySpec* family, FindFamily(json, source, &c.architecture));
  c.model_type = family->model_type;
  FULCRUM_ASSIGN_OR_RETURN(c.vocab_size, GetInt(json, "vocab_size", source));
  FULCRUM_ASSIGN_OR_RETURN(c.hidden_size, GetInt(json, "hidden_size", source));
  FULCRUM_ASSIGN_OR_RETURN(c.intermediate_size, GetInt(json, "intermediate_size", source));
  FULCRUM_ASSIGN_OR_RETURN(c.num_layers, GetInt(json, "num_hidden_layers", source));
  FULCRUM_ASSIGN_OR_RETURN(c.num_heads, GetInt(json, "num_attention_heads", source));
  FULCRUM_ASSIGN_OR_RETURN(c.num_kv_heads,
                           GetIntOr(json, "num_key_value_heads", c.num_heads, source));
  FULCRUM_ASSIGN_OR_RETURN(c.max_position_embeddings,
                           GetInt(json, "max_position_embeddings", source));
  const int64_t default_head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  if (!Has(json, "head_dim") && c.num_heads > 0 && c.hidden_size % c.num_heads != 0) {
    return KeyError(source, "head_dim",
                    absl::StrCat("missing and hidden_size (", c.hidden_size,
                                 ") is not divisible by num_attention_heads (", c.num_heads, ")"));
  }
  FULCRUM_ASSIGN_OR_RETURN(c.head_dim, GetIntOr(json, "head_dim", default_head_dim, source));
  FULCRUM_ASSIGN_OR_RETURN(c.rms_norm_eps, GetDoubleOr(json, "rms_norm_eps", 1e-6, source));
  FULCRUM_ASSIGN_OR_RETURN(c.rope_theta, GetDoubleOr(json, "rope_theta", 10000.0, source));
  FULCRUM_ASSIGN_OR_RETURN(c.initializer_range,
                           GetDoubleOr(json, "initializer_range", 0.02, source));
  FULCRUM_ASSIGN_OR_RETURN(c.tie_word_embeddings,
                           GetBoolOr(json, "tie_word_embeddings", false, source));
  FULCRUM_ASSIGN_OR_RETURN(c.attention_bias,
                           ResolvePresence(family->qkv_bias, family->attention_bias_key,
                                           family->bias_key_default, json, source));
  FULCRUM_ASSIGN_OR_RETURN(c.o_proj_bias,
                           ResolvePresence(family->o_bias, family->attention_bias_key,
                                           family->bias_key_default, json, source));
  FULCRUM_ASSIGN_OR_RETURN(c.mlp_bias, ResolvePresence(family->mlp_bias, family->mlp_bias_key,
                                                       family->bias_key_default, json, source));
  c.qk_norm = family->qk_norm;
  FULCRUM_ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(json, source));
  FULCRUM_RETURN_IF_ERROR(ParseSlidingWindow(*family, json, source, &c));
  FULCRUM_RETURN_IF_ERROR(ParseMoeKeys(*family, json, source, &c));
  FULCRUM_RETURN_IF_ERROR(Validate(c, source));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& config_json_path) {
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(config_json_path));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(config_json_path, ": invalid JSON: ", e.what()));
  }
  return ParseModelConfig(json, config_json_path);
}

absl::Status CheckSequenceLength(const ModelConfig& config, int64_t seq_len) {
  if (config.sliding_window > 0 && seq_len > config.sliding_window) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence length ", seq_len, " > sliding_window ", config.sliding_window,
                     ": sliding-window attention is not supported yet"));
  }
  int64_t limit = config.max_position_embeddings;
  const RopeScaling& rs = config.rope_scaling;
  if (!rs.type.empty()) {
    const int64_t original =
        rs.original_max_position_embeddings > 0 ? rs.original_max_position_embeddings : limit;
    limit = std::max(limit, static_cast<int64_t>(rs.factor * static_cast<double>(original)));
  }
  if (seq_len > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence length ", seq_len, " > max_position_embeddings ", config.max_position_embeddings,
        rs.type.empty() ? ""
                        : absl::StrCat(" (limit with ", rs.type, " rope scaling: ", limit, ")"),
        " of ", config.architecture));
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::models
