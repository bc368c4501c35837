// Decoders of tokenizer.json's "decoder" key, as the reference's
// decoders/{byte_level.rs, metaspace.rs, byte_fallback.rs, fuse.rs, strip.rs,
// replace.rs, sequence.rs}.
//
// Defines: Decoder, ParseDecoder, DecodeTokens, AppendUtf8Lossy.
//
// A decoder rewrites the list of token strings (decode_chain); the results are
// then concatenated. Without a decoder the reference joins tokens with " ".
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites `tokens` in place (may merge them into fewer strings).
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// `json` is the value of the "decoder" key; null gives nullptr. Errors are
// prefixed with `key_path`; an unknown type is "not supported yet: decoder type X".
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& json,
                                                      const std::string& key_path);

// `decoder` (nullptr: tokens joined with " ") over `tokens`, concatenated.
std::string DecodeTokens(const Decoder* decoder, std::vector<std::string> tokens);

// Appends `bytes` to `out`, each maximal invalid UTF-8 subpart replaced by
// U+FFFD (Rust's String::from_utf8_lossy).
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

}  // namespace fulcrum::data
