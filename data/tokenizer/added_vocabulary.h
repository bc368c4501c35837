// Added tokens (tokenizer.json "added_tokens"): found in the text before
// pre-tokenization and emitted as single ids.
//
// Defines: AddedToken, TextSegment, AddedVocabulary.
//
// As in the reference: tokens with normalized = false are matched in the raw
// text first (leftmost, longest); the text between them is normalized; tokens
// with normalized = true are then matched in the normalized text. lstrip /
// rstrip absorb the whitespace on that side into the token's match (it is
// dropped); single_word only matches at word boundaries.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer/normalizer.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// One stretch of the input: either an added token, or normalized text to be
// pre-tokenized and modelled.
struct TextSegment {
  std::string text;            // normalized text; empty for an added token
  int32_t token_id = -1;       // >= 0: this segment is that added token
  bool at_text_start = false;  // begins at offset 0 of the original text
};

class AddedVocabulary {
 public:
  // `json` is the "added_tokens" array (may be absent/null: no added tokens).
  // Errors name `key_path` and the index ("added_tokens[3].id: ...").
  // `normalizer` (the tokenizer's; nullptr: none) is applied to the content
  // of normalized = true tokens, which are matched in normalized text (the
  // reference's refresh_added_tokens does the same). Not retained.
  static absl::StatusOr<AddedVocabulary> Parse(const nlohmann::json& json,
                                               const std::string& key_path,
                                               const Normalizer* normalizer = nullptr);

  AddedVocabulary();
  ~AddedVocabulary();
  AddedVocabulary(AddedVocabulary&&) noexcept;
  AddedVocabulary& operator=(AddedVocabulary&&) noexcept;

  // Splits `text` into segments in order; the segments' normalized text is
  // produced with `normalizer` (nullptr: unchanged). Empty text segments are
  // dropped. Thread-safe.
  std::vector<TextSegment> Split(std::string_view text, const Normalizer* normalizer) const;

  const std::vector<AddedToken>& tokens() const;

 private:
  struct Matchers;  // automata over the normalized / non-normalized tokens
  std::vector<AddedToken> tokens_;
  std::unique_ptr<Matchers> matchers_;
};

}  // namespace fulcrum::data
