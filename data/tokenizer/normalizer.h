// Normalizers of tokenizer.json's "normalizer" key: NFC, NFD, NFKC, NFKD
// (ICU), Lowercase, Strip, Prepend, Replace, Sequence.
//
// Defines: Normalizer, ParseNormalizer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `text` (valid UTF-8) in place. Called once per segment between
  // added tokens, as the reference does (so Prepend applies per segment).
  virtual void Normalize(std::string* text) const = 0;
};

// `json` is the value of the "normalizer" key; null gives nullptr (no
// normalization). `key_path` (e.g. "tokenizer.json: normalizer") prefixes
// errors; an unknown type is "not supported yet: normalizer type X".
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& json,
                                                            const std::string& key_path);

}  // namespace fulcrum::data
