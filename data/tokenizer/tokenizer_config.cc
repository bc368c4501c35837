#include "data/tokenizer/tokenizer_config.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "data/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {
namespace {

// A token field: "text", {"__type": "AddedToken", "content": "text", ...},
// null or absent.
absl::StatusOr<std::optional<std::string>> ReadTokenField(const nlohmann::json& config,
                                                          const std::string& source,
                                                          const std::string& key) {
  const nlohmann::json* value = JsonOptionalField(config, key);
  if (value == nullptr) return std::optional<std::string>();
  const std::string path = absl::StrCat(source, ": ", key);
  if (value->is_string()) return std::optional<std::string>(value->get<std::string>());
  if (value->is_object()) {
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* content, JsonField(*value, path, "content"));
    FULCRUM_ASSIGN_OR_RETURN(std::string text,
                             JsonString(*content, absl::StrCat(path, ".content")));
    return std::optional<std::string>(std::move(text));
  }
  return JsonError(path, absl::StrCat("expected a string, an AddedToken object or null, got ",
                                      value->type_name()));
}

// chat_template: a string, or a list of {"name", "template"} (the one named
// "default" is the chat template; else the first).
absl::StatusOr<std::string> ReadChatTemplate(const nlohmann::json& config,
                                             const std::string& source) {
  const nlohmann::json* value = JsonOptionalField(config, "chat_template");
  if (value == nullptr) return std::string();
  const std::string path = absl::StrCat(source, ": chat_template");
  if (value->is_string()) return value->get<std::string>();
  if (!value->is_array()) return JsonError(path, "expected a string or a list of {name, template}");
  std::string chosen;
  for (size_t i = 0; i < value->size(); ++i) {
    const std::string item_path = absl::StrCat(path, "[", i, "]");
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* name, JsonField((*value)[i], item_path, "name"));
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* text,
                             JsonField((*value)[i], item_path, "template"));
    FULCRUM_ASSIGN_OR_RETURN(std::string source_text,
                             JsonString(*text, absl::StrCat(item_path, ".template")));
    if (i == 0 || (name->is_string() && name->get<std::string>() == "default"))
      chosen = source_text;
  }
  return chosen;
}

}  // namespace

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view json,
                                                     const std::string& source) {
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid JSON at byte ", e.byte, ": ", e.what()));
  }
  if (!config.is_object()) return JsonError(source, "expected a JSON object");
  TokenizerConfig result;
  result.present = true;
  FULCRUM_ASSIGN_OR_RETURN(result.bos_token, ReadTokenField(config, source, "bos_token"));
  FULCRUM_ASSIGN_OR_RETURN(result.eos_token, ReadTokenField(config, source, "eos_token"));
  FULCRUM_ASSIGN_OR_RETURN(result.pad_token, ReadTokenField(config, source, "pad_token"));
  FULCRUM_ASSIGN_OR_RETURN(result.add_bos_token,
                           JsonBool(config, source + ":", "add_bos_token", false));
  FULCRUM_ASSIGN_OR_RETURN(result.add_eos_token,
                           JsonBool(config, source + ":", "add_eos_token", false));
  FULCRUM_ASSIGN_OR_RETURN(result.chat_template, ReadChatTemplate(config, source));
  return result;
}

absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path) {
  FULCRUM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseTokenizerConfig(text, path);
}

}  // namespace fulcrum::data
