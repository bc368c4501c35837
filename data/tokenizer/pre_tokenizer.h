// Pre-tokenizers of tokenizer.json's "pre_tokenizer" key: ByteLevel, Split
// (string or PCRE2 regex, all behaviours, invert), Digits, Metaspace,
// Whitespace, WhitespaceSplit, Punctuation, Sequence.
//
// Defines: Pieces, PreTokenizer, ParsePreTokenizer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

// The pieces of one normalized segment, in order; each becomes one BPE word.
// Owned strings: ByteLevel and Metaspace rewrite bytes.
using Pieces = std::vector<std::string>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece of `pieces` further (and may rewrite it), in place.
  // `segment_at_text_start`: the segment begins at offset 0 of the original
  // text (Metaspace prepend_scheme "first" only prepends there).
  virtual void Split(Pieces* pieces, bool segment_at_text_start) const = 0;
};

// `json` is the value of the "pre_tokenizer" key; null gives nullptr (the
// whole segment is one piece). Errors are prefixed with `key_path`; a regex
// that PCRE2 rejects names the pattern and PCRE2's message; an unknown type is
// "not supported yet: pre_tokenizer type X".
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& json,
                                                                const std::string& key_path);

}  // namespace fulcrum::data
