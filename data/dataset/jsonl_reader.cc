#include "data/dataset/jsonl_reader.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "data/tokenizer/utf8.h"

namespace fulcrum::data {

absl::StatusOr<JsonlReader> JsonlReader::Open(const std::string& path) {
  auto in = std::make_unique<std::ifstream>(path, std::ios::binary);
  if (!in->is_open()) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  return JsonlReader(path, std::move(in));
}

bool JsonlReader::Next(JsonlLine* line) {
  while (std::getline(*in_, line->text)) {
    ++line_number_;
    if (!line->text.empty() && line->text.back() == '\r') line->text.pop_back();
    if (absl::StripAsciiWhitespace(line->text).empty()) continue;
    line->number = line_number_;
    return true;
  }
  return false;
}

absl::Status JsonlReader::status() const {
  // getline sets failbit (with eofbit) at a clean end; badbit is a real error.
  if (in_->bad()) {
    return absl::DataLossError(
        absl::StrCat(path_, ": read error after line ", line_number_));
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ParseJsonObjectLine(std::string_view line) {
  // Checked before parsing so that the message can give the byte offset
  // (the JSON parser would only say "ill-formed UTF-8").
  if (const auto bad = FindInvalidUtf8(line); bad.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte ", *bad));
  }
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object, got ", value.type_name()));
  }
  return value;
}

}  // namespace fulcrum::data
