// Pre-tokenized JSONL datasets: one sample per line,
//   {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
// where "labels" is optional (absent: labels = input_ids) and -100 marks a
// token that is not a target (e.g. a prompt token).
//
// Defines: Sample, kIgnoreIndex, LoadPretokenizedJsonl, CheckVocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::data {

// Label value that the loss ignores (PyTorch / Hugging Face convention).
inline constexpr int64_t kIgnoreIndex = -100;

struct Sample {
  std::vector<int64_t> input_ids;  // [n], n >= 1, every id >= 0
  std::vector<int64_t> labels;     // [n]; -100 = not a target. From the file, else = input_ids.
  int64_t line = 0;                // 1-based line in the source file; 0 when not read from a file
};

// Reads a JSONL file, one sample per line. Blank (whitespace-only) lines are
// skipped. Errors are "PATH:LINE: what": unreadable file, invalid JSON, a line
// that is not an object, missing or non-list input_ids, non-integer or
// negative ids, labels that are not a list of integers (>= 0 or -100) of the
// same length as input_ids, an empty sample; and "PATH: no samples" for a file
// without any.
absl::StatusOr<std::vector<Sample>> LoadPretokenizedJsonl(const std::string& path);

// Every input id and every label other than -100 must be < vocab_size.
// The error names `source` (usually the file), the sample's line and the
// offending value: "data.jsonl:7: input_ids[3] = 50000 >= vocab_size 32000".
absl::Status CheckVocabulary(const std::vector<Sample>& samples, int64_t vocab_size,
                             const std::string& source);

}  // namespace fulcrum::data
