// Post-processors of tokenizer.json's "post_processor" key, as the
// reference's processors/{template.rs, bytelevel.rs, sequence.rs, roberta.rs,
// bert.rs}, for single sequences.
//
// Defines: PostProcessor, ParsePostProcessor.
//
// Only ids matter here: TemplateProcessing's "single" template places its
// SpecialToken ids around the sequence ("A"); RobertaProcessing and
// BertProcessing add cls ... sep; ByteLevel only trims offsets (no ids).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens to the ids of one sequence. Called only when
  // add_special_tokens (without them the reference changes no ids).
  virtual void AddSpecialTokens(std::vector<int32_t>* ids) const = 0;
};

// `json` is the value of the "post_processor" key; null gives nullptr. Errors
// are prefixed with `key_path`; an unknown type is
// "not supported yet: post_processor type X".
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& json,
                                                                  const std::string& key_path);

}  // namespace fulcrum::data
