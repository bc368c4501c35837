// Collects a rendering as prompt pieces and assistant answers, then marks
// which pieces are training targets under RenderOptions.
//
// Defines: SegmentBuilder, TemplateTokens, TrimWhitespace, StartsWithSpace,
// UnknownRoleError.
//
// Used by the family templates (llama3_template.cc, chatml_template.cc, ...);
// not part of the public chat template API.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "data/template/chat_template.h"

namespace fulcrum::data {

// bos/eos strings a template pastes into the text (from tokenizer_config.json,
// else the family's own).
struct TemplateTokens {
  std::string bos;
  std::string eos;
};

class SegmentBuilder {
 public:
  // Text that is never a target unless train_on_prompt.
  void AddPrompt(std::string_view text);
  // An assistant turn: `header` (a prompt piece) then `answer` (the answer
  // text plus its end-of-turn marker, a target). When `header` ends in '\n'
  // and `answer` starts with whitespace, the byte-level pre-tokenizers
  // (Llama-3, Qwen, DeepSeek) would group that '\n' with the answer's leading
  // whitespace, so the '\n' moves into the answer: the boundary then lies
  // where whole-text tokenization also splits.
  void AddAnswer(std::string_view header, std::string_view answer);
  // Applies the options: train_on_prompt makes every piece a target;
  // mask_history keeps only the last answer as a target. Adjacent pieces with
  // the same flag merge; empty pieces are dropped.
  RenderedChat Finish(const RenderOptions& options) const;

 private:
  struct Piece {
    std::string text;
    int answer_index = -1;  // which assistant answer, -1 for prompt text
  };
  std::vector<Piece> pieces_;
  int answers_ = 0;
};

// Python's str.strip() on ASCII whitespace (what Jinja's |trim does for the
// texts the templates see in practice).
std::string TrimWhitespace(std::string_view text);
bool StartsWithSpace(std::string_view text);

// "message 3 has role 'tool'; the <name> template accepts system, user, assistant".
absl::Status UnknownRoleError(const std::string& template_name, size_t index,
                              const std::string& role);

// Checks roles are system/user/assistant and the conversation is not empty.
absl::Status CheckBasicConversation(const std::string& template_name,
                                    const Conversation& conversation);

}  // namespace fulcrum::data
