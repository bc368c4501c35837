// Typed reads of tokenizer.json values whose errors name the JSON key path
// ("tokenizer.json: model.vocab: missing").
//
// Defines: JsonField, JsonString, JsonBool, JsonInt, JsonOptionalString.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

// "file.json:" + "key" -> "file.json: key"; "a.b" + "c" -> "a.b.c".
inline std::string JsonKeyPath(const std::string& parent, const std::string& key) {
  if (!parent.empty() && parent.back() == ':') return absl::StrCat(parent, " ", key);
  return absl::StrCat(parent, ".", key);
}

inline absl::Status JsonError(const std::string& key_path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(key_path, ": ", what));
}

// `object[key]`, an error when `object` is not an object or has no `key`.
inline absl::StatusOr<const nlohmann::json*> JsonField(const nlohmann::json& object,
                                                       const std::string& key_path,
                                                       const std::string& key) {
  if (!object.is_object()) return JsonError(key_path, "expected an object");
  const auto it = object.find(key);
  if (it == object.end()) return JsonError(JsonKeyPath(key_path, key), "missing");
  return &*it;
}

// `object[key]` or nullptr when absent or null.
inline const nlohmann::json* JsonOptionalField(const nlohmann::json& object,
                                               const std::string& key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

inline absl::StatusOr<std::string> JsonString(const nlohmann::json& value,
                                              const std::string& key_path) {
  if (!value.is_string())
    return JsonError(key_path, absl::StrCat("expected a string, got ", value.type_name()));
  return value.get<std::string>();
}

// A string field that may be absent or null.
inline absl::StatusOr<std::optional<std::string>> JsonOptionalString(const nlohmann::json& object,
                                                                     const std::string& key_path,
                                                                     const std::string& key) {
  const nlohmann::json* value = JsonOptionalField(object, key);
  if (value == nullptr) return std::optional<std::string>();
  auto text = JsonString(*value, JsonKeyPath(key_path, key));
  if (!text.ok()) return text.status();
  return std::optional<std::string>(*std::move(text));
}

// A bool field; `fallback` when absent or null.
inline absl::StatusOr<bool> JsonBool(const nlohmann::json& object, const std::string& key_path,
                                     const std::string& key, bool fallback) {
  const nlohmann::json* value = JsonOptionalField(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    return JsonError(JsonKeyPath(key_path, key),
                     absl::StrCat("expected a bool, got ", value->type_name()));
  }
  return value->get<bool>();
}

// A non-negative integer that fits int32.
inline absl::StatusOr<int32_t> JsonId(const nlohmann::json& value, const std::string& key_path) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX) {
    return JsonError(key_path,
                     absl::StrCat("expected a token id (integer >= 0), got ", value.dump()));
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

}  // namespace fulcrum::data
