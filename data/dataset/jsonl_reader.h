// Streaming JSONL reading: one line at a time (a file is never held whole),
// each non-blank line parsed into a JSON object.
//
// Defines: JsonlLine, JsonlReader, ParseJsonObjectLine.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fulcrum::data {

struct JsonlLine {
  std::string text;  // without the line break (and without a trailing '\r')
  int64_t number = 0;  // 1-based line number in the file
};

class JsonlReader {
 public:
  // Error "PATH: cannot open: REASON" when the file cannot be read.
  static absl::StatusOr<JsonlReader> Open(const std::string& path);

  // Reads the next non-blank (not whitespace-only) line into *line; false at
  // the end of the file. A read error after opening is reported by status().
  bool Next(JsonlLine* line);
  // OK, or "PATH: read error" when reading stopped early.
  absl::Status status() const;

  const std::string& path() const { return path_; }

 private:
  JsonlReader(std::string path, std::unique_ptr<std::ifstream> in)
      : path_(std::move(path)), in_(std::move(in)) {}

  std::string path_;
  std::unique_ptr<std::ifstream> in_;
  int64_t line_number_ = 0;
};

// Parses one line into a JSON object. Errors carry no location (the caller
// prefixes "PATH:LINE: "): invalid UTF-8 (with the byte offset in the line),
// invalid JSON (with the parser's reason), a value that is not an object.
absl::StatusOr<nlohmann::json> ParseJsonObjectLine(std::string_view line);

}  // namespace fulcrum::data
