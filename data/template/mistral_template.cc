#include "data/template/mistral_template.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace fulcrum::data {
namespace {

// The messages after an optional leading system message.
struct SplitSystem {
  std::optional<std::string> system;
  size_t first = 0;  // index of the first looped message
};

SplitSystem SplitLeadingSystem(const Conversation& conversation) {
  if (conversation[0].role == "system") return {conversation[0].content, 1};
  return {std::nullopt, 0};
}

// Jinja's `(role == 'user') != (loop.index0 % 2 == 0)` check for message i.
absl::Status CheckAlternationAt(const std::string& template_name, const Conversation& conversation,
                                size_t first, size_t i, const std::string& jinja_message) {
  bool is_user = conversation[i].role == "user";
  if (is_user == ((i - first) % 2 == 0)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(template_name, " chat template: ", jinja_message,
                                                 " (message ", i, " has role '",
                                                 conversation[i].role, "')"));
}

class MistralTemplate : public ChatTemplate {
 public:
  explicit MistralTemplate(const TemplateTokens& tokens) : tokens_(tokens) {}
  std::string name() const override { return "mistral"; }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    SplitSystem split = SplitLeadingSystem(conversation);
    // The template checks alternation and then the role, message by message;
    // a later system message fails whichever check comes first.
    for (size_t i = split.first; i < conversation.size(); ++i) {
      FULCRUM_RETURN_IF_ERROR(
          CheckAlternationAt(name(), conversation, split.first, i,
                             "After the optional system message, conversation roles must alternate "
                             "user/assistant/user/assistant/..."));
      if (conversation[i].role == "system") {
        return absl::InvalidArgumentError(absl::StrCat(
            "mistral chat template: Only user and assistant roles are supported, with the "
            "exception of an initial optional system message! (message ",
            i, " has role 'system')"));
      }
    }
    SegmentBuilder builder;
    builder.AddPrompt(tokens_.bos);
    for (size_t i = split.first; i < conversation.size(); ++i) {
      const Message& message = conversation[i];
      if (message.role == "user") {
        std::string user = message.content;
        if (i == split.first && split.system) user = *split.system + "\n\n" + user;
        builder.AddPrompt(" [INST] " + user + " [/INST]");
      } else {
        builder.AddAnswer("", " " + message.content + tokens_.eos);
      }
    }
    (void)options.add_generation_prompt;  // the template has none
    return builder.Finish(options);
  }

 private:
  TemplateTokens tokens_;
};

class GemmaTemplate : public ChatTemplate {
 public:
  explicit GemmaTemplate(const TemplateTokens& tokens) : tokens_(tokens) {}
  std::string name() const override { return "gemma"; }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    SplitSystem split = SplitLeadingSystem(conversation);
    for (size_t i = split.first; i < conversation.size(); ++i) {
      FULCRUM_RETURN_IF_ERROR(CheckAlternationAt(
          name(), conversation, split.first, i,
          "Conversation roles must alternate user/assistant/user/assistant/..."));
    }
    SegmentBuilder builder;
    builder.AddPrompt(tokens_.bos);
    for (size_t i = split.first; i < conversation.size(); ++i) {
      const Message& message = conversation[i];
      std::string prefix =
          (i == split.first && split.system) ? *split.system + "\n\n" : std::string();
      std::string body = TrimWhitespace(message.content) + "<end_of_turn>";
      if (message.role == "assistant") {
        builder.AddAnswer("<start_of_turn>model\n" + prefix, body);
      } else {
        builder.AddPrompt("<start_of_turn>" + message.role + "\n" + prefix + body);
      }
      builder.AddPrompt("\n");
    }
    if (options.add_generation_prompt) builder.AddPrompt("<start_of_turn>model\n");
    return builder.Finish(options);
  }

 private:
  TemplateTokens tokens_;
};

}  // namespace

std::unique_ptr<ChatTemplate> MakeMistralTemplate(const TemplateTokens& tokens) {
  return std::make_unique<MistralTemplate>(tokens);
}

std::unique_ptr<ChatTemplate> MakeGemmaTemplate(const TemplateTokens& tokens) {
  return std::make_unique<GemmaTemplate>(tokens);
}

}  // namespace fulcrum::data
