// Chat templates: conversations rendered exactly as the model's own Jinja
// chat_template renders them, for the known families, with the spans that
// are training targets.
//
// Defines: Message, Conversation, RenderOptions, RenderedSegment,
// RenderedChat, ChatTemplate, KnownChatTemplates.
//
// A general Jinja interpreter is out of scope: each family's template is
// written in C++ and checked against the Jinja reference in tests. The
// template is recognized from tokenizer_config.json's chat_template, or named
// in the recipe (data.chat_template).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer/tokenizer_config.h"

namespace fulcrum::data {

struct Message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

using Conversation = std::vector<Message>;

struct RenderOptions {
  bool add_generation_prompt = false;  // end with the assistant header (for generate)
  bool train_on_prompt = false;        // every segment is a target
  bool mask_history = false;           // only the LAST assistant turn is a target
};

// A piece of the rendered text. Segment boundaries lie where the template
// switches between prompt and answer, so that tokenizing segment by segment
// gives the same ids as tokenizing the whole text (tests check this).
struct RenderedSegment {
  std::string text;
  bool is_target = false;  // trained on (an assistant answer and its end-of-turn token)
};

struct RenderedChat {
  std::vector<RenderedSegment> segments;
  std::string Text() const;  // all segments concatenated
};

class ChatTemplate {
 public:
  virtual ~ChatTemplate() = default;
  // The template's name as a recipe writes it ("llama3", "chatml", ...).
  virtual std::string name() const = 0;
  // Errors: an unknown role, roles out of the order the template requires
  // (e.g. Mistral's alternation), an empty conversation.
  virtual absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                              const RenderOptions& options) const = 0;
};

// Names accepted by Create, for error messages and docs.
std::vector<std::string> KnownChatTemplates();

// `name` is one of KnownChatTemplates(), or "auto": recognized from
// config.chat_template (error when absent or not one of the known ones: the
// message lists the names a recipe can give). Special-token strings
// (bos/eos) come from `config`.
absl::StatusOr<std::unique_ptr<ChatTemplate>> CreateChatTemplate(const std::string& name,
                                                                 const TokenizerConfig& config);

}  // namespace fulcrum::data
