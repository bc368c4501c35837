// Tokenizer: a Hugging Face tokenizer.json, reproduced id for id.
//
// Defines: Tokenizer.
//
// The pipeline is the `tokenizers` library's:
//   text -> added tokens split out (AddedVocabulary, which also normalizes the
//   text between them) -> pre-tokenizer (pieces) -> model (BPE ids per piece)
//   -> post-processor (BOS/EOS when add_special_tokens).
// Decoding maps ids to tokens and runs the decoder chain.
//
// The reference is what `tokenizers` produces from tokenizer.json alone;
// tokenizer_config.json flags such as add_bos_token are NOT applied here (the
// training path applies them, see tokenizer_config.h).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "data/tokenizer/tokenizer_config.h"

namespace fulcrum::data {

class TokenizerPipeline;  // tokenizer.cc: normalizer, pre-tokenizer, model, ...

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a directory holding one. A
  // tokenizer_config.json next to it is read into config() when present.
  // Errors name the file and the JSON key path ("tokenizer.json: model.merges[12]: ...");
  // unsupported component types are "not supported yet: pre_tokenizer type X".
  static absl::StatusOr<std::shared_ptr<const Tokenizer>> Load(const std::string& path);
  // From the text of a tokenizer.json; `source` names it in errors.
  static absl::StatusOr<std::shared_ptr<const Tokenizer>> FromJson(std::string_view json,
                                                                   const std::string& source,
                                                                   TokenizerConfig config = {});

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // `text` must be valid UTF-8 (checked by callers: see utf8.h). Thread-safe.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const;
  // Encode of every text, on `num_threads` threads (<= 0: all cores), in order.
  std::vector<std::vector<int32_t>> EncodeBatch(const std::vector<std::string>& texts,
                                                bool add_special_tokens, int num_threads) const;
  // Ids to text through the decoder chain. Unknown ids are skipped.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // Largest id + 1 over the model vocabulary and the added tokens.
  int64_t vocab_size() const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // True for added tokens marked "special" (skipped by Decode(..., true)).
  bool IsSpecial(int32_t id) const;
  // tokenizer_config.json next to tokenizer.json (defaults when absent).
  const TokenizerConfig& config() const { return config_; }
  // The file it was loaded from (or `source`).
  const std::string& source() const { return source_; }

 private:
  Tokenizer(std::unique_ptr<TokenizerPipeline> pipeline, TokenizerConfig config,
            std::string source);

  std::unique_ptr<TokenizerPipeline> pipeline_;
  TokenizerConfig config_;
  std::string source_;
};

}  // namespace fulcrum::data
