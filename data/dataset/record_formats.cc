#include "data/dataset/record_formats.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace fulcrum::data {
namespace {

using nlohmann::json;

// `"key"` or `"key" (mapped from "logical")` for messages.
std::string Describe(const FieldMap& fields, const std::string& logical) {
  const std::string key = FieldName(fields, logical);
  if (key == logical) return absl::StrCat("\"", key, "\"");
  return absl::StrCat("\"", key, "\" (mapped from \"", logical, "\")");
}

// Finds a string field of `object`; `where` prefixes the message for nested
// objects ("messages[2]: "). Absent or null optional fields give nullptr.
absl::StatusOr<const json*> FindString(const json& object, const FieldMap& fields,
                                       const std::string& logical, bool required,
                                       const std::string& where = "") {
  const auto it = object.find(FieldName(fields, logical));
  if (it == object.end() || (!required && it->is_null())) {
    if (!required) return static_cast<const json*>(nullptr);
    return absl::InvalidArgumentError(
        absl::StrCat(where, "missing field ", Describe(fields, logical)));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "field ", Describe(fields, logical),
                                                   " is not a string (", it->type_name(), ")"));
  }
  return &*it;
}

absl::StatusOr<std::string> ReadRequiredString(const json& object, const FieldMap& fields,
                                               const std::string& logical,
                                               const std::string& where = "") {
  FULCRUM_ASSIGN_OR_RETURN(const json* value,
                           FindString(object, fields, logical, /*required=*/true, where));
  return value->get<std::string>();
}

// An absent or null optional field reads as "".
absl::StatusOr<std::string> ReadOptionalString(const json& object, const FieldMap& fields,
                                               const std::string& logical) {
  FULCRUM_ASSIGN_OR_RETURN(const json* value,
                           FindString(object, fields, logical, /*required=*/false));
  return value == nullptr ? std::string() : value->get<std::string>();
}

absl::StatusOr<const json*> ReadList(const json& object, const FieldMap& fields,
                                     const std::string& logical) {
  const auto it = object.find(FieldName(fields, logical));
  if (it == object.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing field ", Describe(fields, logical)));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("field ", Describe(fields, logical),
                                                   " is not a list (", it->type_name(), ")"));
  }
  return &*it;
}

// OpenAI roles are taken as they are; ShareGPT's "from" values are mapped.
absl::StatusOr<std::string> CanonicalRole(const std::string& role, bool sharegpt) {
  if (role == "system" || role == "user" || role == "assistant") return role;
  if (sharegpt && role == "human") return std::string("user");
  if (sharegpt && role == "gpt") return std::string("assistant");
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown role \"", role, "\" (expected ",
      sharegpt ? "system, human, user, gpt, assistant" : "system, user, assistant", ")"));
}

// messages: [{role, content}], sharegpt: [{from, value}].
absl::StatusOr<Conversation> ReadConversation(const json& object, const FieldMap& fields,
                                              bool sharegpt) {
  const std::string list_name = sharegpt ? "conversations" : "messages";
  const std::string role_name = sharegpt ? "from" : "role";
  const std::string content_name = sharegpt ? "value" : "content";
  FULCRUM_ASSIGN_OR_RETURN(const json* list, ReadList(object, fields, list_name));
  if (list->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field ", Describe(fields, list_name), " is an empty list"));
  }
  Conversation conversation;
  conversation.reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    const json& turn = (*list)[i];
    const std::string where = absl::StrCat(FieldName(fields, list_name), "[", i, "]: ");
    if (!turn.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected a JSON object, got ", turn.type_name()));
    }
    FULCRUM_ASSIGN_OR_RETURN(std::string role,
                             ReadRequiredString(turn, fields, role_name, where));
    auto canonical = CanonicalRole(role, sharegpt);
    if (!canonical.ok()) {
      return Annotate(canonical.status(),
                      absl::StrCat(where.substr(0, where.size() - 2), ".",
                                   FieldName(fields, role_name)));
    }
    FULCRUM_ASSIGN_OR_RETURN(std::string content,
                             ReadRequiredString(turn, fields, content_name, where));
    conversation.push_back(Message{*std::move(canonical), std::move(content)});
  }
  return conversation;
}

// Alpaca: [system] + user(instruction [+ "\n\n" + input]) + assistant(output).
absl::StatusOr<Conversation> ReadInstruction(const json& object, const FieldMap& fields) {
  FULCRUM_ASSIGN_OR_RETURN(std::string instruction,
                           ReadRequiredString(object, fields, "instruction"));
  FULCRUM_ASSIGN_OR_RETURN(std::string input, ReadOptionalString(object, fields, "input"));
  FULCRUM_ASSIGN_OR_RETURN(std::string output, ReadRequiredString(object, fields, "output"));
  FULCRUM_ASSIGN_OR_RETURN(std::string system, ReadOptionalString(object, fields, "system"));
  Conversation conversation;
  if (!system.empty()) conversation.push_back(Message{"system", std::move(system)});
  std::string user = std::move(instruction);
  if (!input.empty()) absl::StrAppend(&user, "\n\n", input);
  conversation.push_back(Message{"user", std::move(user)});
  conversation.push_back(Message{"assistant", std::move(output)});
  return conversation;
}

}  // namespace

std::vector<std::string> LogicalFields(TextFormat format) {
  switch (format) {
    case TextFormat::kText:
      return {"text"};
    case TextFormat::kInstruction:
      return {"instruction", "input", "output", "system"};
    case TextFormat::kMessages:
      return {"messages", "role", "content"};
    case TextFormat::kShareGpt:
      return {"conversations", "from", "value"};
  }
  return {};
}

absl::Status CheckFieldMap(const FieldMap& fields, TextFormat format, const std::string& source) {
  const std::vector<std::string> known = LogicalFields(format);
  for (const auto& [logical, key] : fields) {
    if (std::find(known.begin(), known.end(), logical) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": fields: unknown key \"", logical, "\" for this format (expected ",
                       absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

std::string FieldName(const FieldMap& fields, const std::string& logical) {
  const auto it = fields.find(logical);
  return it == fields.end() ? logical : it->second;
}

absl::StatusOr<TextRecord> ParseTextRecord(const json& object, TextFormat format,
                                           const FieldMap& fields) {
  TextRecord record;
  switch (format) {
    case TextFormat::kText: {
      FULCRUM_ASSIGN_OR_RETURN(record.text, ReadRequiredString(object, fields, "text"));
      return record;
    }
    case TextFormat::kInstruction: {
      record.is_conversation = true;
      FULCRUM_ASSIGN_OR_RETURN(record.conversation, ReadInstruction(object, fields));
      return record;
    }
    case TextFormat::kMessages:
    case TextFormat::kShareGpt: {
      record.is_conversation = true;
      FULCRUM_ASSIGN_OR_RETURN(
          record.conversation,
          ReadConversation(object, fields, format == TextFormat::kShareGpt));
      return record;
    }
  }
  return absl::InternalError("unhandled TextFormat");
}

}  // namespace fulcrum::data
