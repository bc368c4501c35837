#include "data/template/deepseek_template.h"

#include "core/status.h"

namespace fulcrum::data {
namespace {

class DeepseekV3Template : public ChatTemplate {
 public:
  explicit DeepseekV3Template(const TemplateTokens& tokens) : tokens_(tokens) {}
  std::string name() const override { return "deepseek_v3"; }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    // The template gathers every system message, wherever it is, up front.
    std::string system;
    bool first_system = true;
    for (const Message& message : conversation) {
      if (message.role != "system") continue;
      if (!first_system) system += "\n\n";
      system += message.content;
      first_system = false;
    }
    SegmentBuilder builder;
    builder.AddPrompt(tokens_.bos + system);
    for (const Message& message : conversation) {
      if (message.role == "user") {
        builder.AddPrompt("<｜User｜>" + message.content);
      } else if (message.role == "assistant") {
        // The template writes this literal, not eos_token.
        builder.AddAnswer("<｜Assistant｜>", message.content + "<｜end▁of▁sentence｜>");
      }
    }
    if (options.add_generation_prompt) builder.AddPrompt("<｜Assistant｜>");
    return builder.Finish(options);
  }

 private:
  TemplateTokens tokens_;
};

class DeepseekV2Template : public ChatTemplate {
 public:
  explicit DeepseekV2Template(const TemplateTokens& tokens) : tokens_(tokens) {}
  std::string name() const override { return "deepseek_v2"; }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    SegmentBuilder builder;
    builder.AddPrompt(tokens_.bos);
    for (const Message& message : conversation) {
      if (message.role == "user") {
        builder.AddPrompt("User: " + message.content + "\n\n");
      } else if (message.role == "assistant") {
        // The answer starts with the space after "Assistant:", as the model
        // writes it after the generation prompt.
        builder.AddAnswer("Assistant:", " " + message.content + tokens_.eos);
      } else {
        builder.AddPrompt(message.content + "\n\n");
      }
    }
    if (options.add_generation_prompt) builder.AddPrompt("Assistant:");
    return builder.Finish(options);
  }

 private:
  TemplateTokens tokens_;
};

}  // namespace

std::unique_ptr<ChatTemplate> MakeDeepseekV3Template(const TemplateTokens& tokens) {
  return std::make_unique<DeepseekV3Template>(tokens);
}

std::unique_ptr<ChatTemplate> MakeDeepseekV2Template(const TemplateTokens& tokens) {
  return std::make_unique<DeepseekV2Template>(tokens);
}

}  // namespace fulcrum::data
