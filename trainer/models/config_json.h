// Typed reads of config.json keys with errors naming the file and the key
// (shared by model_config.cc and model_config_moe.cc). Internal to
// trainer/models.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace fulcrum::models::config_json {

using Json = nlohmann::json;

// Present and not null.
inline bool Has(const Json& json, const std::string& key) {
  return json.contains(key) && !json.at(key).is_null();
}

inline absl::Status KeyError(const std::string& source, const std::string& key,
                             const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": key \"", key, "\": ", what));
}

inline absl::StatusOr<int64_t> GetInt(const Json& json, const std::string& key,
                                      const std::string& source) {
  if (!Has(json, key)) return KeyError(source, key, "missing (required)");
  const Json& v = json.at(key);
  if (!v.is_number_integer())
    return KeyError(source, key, absl::StrCat("expected an integer, got ", v.dump()));
  return v.get<int64_t>();
}

inline absl::StatusOr<int64_t> GetIntOr(const Json& json, const std::string& key, int64_t fallback,
                                        const std::string& source) {
  if (!Has(json, key)) return fallback;
  return GetInt(json, key, source);
}

inline absl::StatusOr<double> GetDoubleOr(const Json& json, const std::string& key, double fallback,
                                          const std::string& source) {
  if (!Has(json, key)) return fallback;
  const Json& v = json.at(key);
  if (!v.is_number())
    return KeyError(source, key, absl::StrCat("expected a number, got ", v.dump()));
  return v.get<double>();
}

inline absl::StatusOr<bool> GetBoolOr(const Json& json, const std::string& key, bool fallback,
                                      const std::string& source) {
  if (!Has(json, key)) return fallback;
  const Json& v = json.at(key);
  if (!v.is_boolean())
    return KeyError(source, key, absl::StrCat("expected true/false, got ", v.dump()));
  return v.get<bool>();
}

inline absl::StatusOr<std::string> GetStringOr(const Json& json, const std::string& key,
                                               const std::string& fallback,
                                               const std::string& source) {
  if (!Has(json, key)) return fallback;
  const Json& v = json.at(key);
  if (!v.is_string())
    return KeyError(source, key, absl::StrCat("expected a string, got ", v.dump()));
  return v.get<std::string>();
}

}  // namespace fulcrum::models::config_json

namespace fulcrum::models {

struct ModelConfig;
struct FamilySpec;

// model_config_moe.cc: the mixture-of-experts, latent-attention, MTP and FP8
// keys of `json` into `config` (model_type, num_layers, intermediate_size and
// num_heads already set), validated; errors name `source` and the key.
absl::Status ParseMoeKeys(const FamilySpec& family, const nlohmann::json& json,
                          const std::string& source, ModelConfig* config);

}  // namespace fulcrum::models
