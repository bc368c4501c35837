// One JSONL record of a text dataset (see text_dataset.h for the formats)
// read into either a plain text or a conversation, through the dataset's
// FieldMap.
//
// Defines: TextRecord, LogicalFields, CheckFieldMap, FieldName, ParseTextRecord.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/dataset/text_dataset.h"
#include "data/template/chat_template.h"

namespace fulcrum::data {

struct TextRecord {
  bool is_conversation = false;
  std::string text;           // format text
  Conversation conversation;  // formats instruction, messages, sharegpt
};

// The logical names that `format` reads (the keys a FieldMap may have).
std::vector<std::string> LogicalFields(TextFormat format);

// Error for a FieldMap key that `format` does not read (a typo would
// otherwise be ignored silently), naming `source` and the accepted keys.
absl::Status CheckFieldMap(const FieldMap& fields, TextFormat format, const std::string& source);

// The record key for the logical name `logical` ("instruction", "role", ...):
// fields[logical] when mapped, else `logical` itself.
std::string FieldName(const FieldMap& fields, const std::string& logical);

// Errors name the record key and, when remapped, the logical name it stands
// for: `missing field "prompt" (mapped from "instruction")`,
// `messages[1].role: unknown role "tool" (expected system, user, assistant)`.
// No location: the caller prefixes "PATH:LINE: ".
absl::StatusOr<TextRecord> ParseTextRecord(const nlohmann::json& object, TextFormat format,
                                           const FieldMap& fields);

}  // namespace fulcrum::data
