// tokenizer_config.json: what transformers adds on top of tokenizer.json.
//
// Defines: TokenizerConfig, LoadTokenizerConfig, ParseTokenizerConfig.
//
// Only the fields the training path needs. Token fields may be a string or an
// AddedToken object ({"__type": "AddedToken", "content": ...}); both are read
// as the content string.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fulcrum::data {

struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
  // transformers' slow/Llama tokenizers prepend BOS / append EOS themselves
  // even where tokenizer.json's post-processor does not (e.g. DeepSeek-V3).
  // The training path honours these; `fulcrum tokenize` does not.
  bool add_bos_token = false;
  bool add_eos_token = false;
  std::string chat_template;  // Jinja source; empty when absent
  bool present = false;       // a tokenizer_config.json was read
};

// Reads `path` (a tokenizer_config.json). A missing file is an error here;
// Tokenizer::Load treats it as optional. Errors name the file and key.
absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path);
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view json,
                                                     const std::string& source);

}  // namespace fulcrum::data
