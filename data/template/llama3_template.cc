#include "data/template/llama3_template.h"

#include "core/status.h"

namespace fulcrum::data {
namespace {

constexpr char kEndOfTurn[] = "<|eot_id|>";

std::string Header(const std::string& role) {
  return "<|start_header_id|>" + role + "<|end_header_id|>\n\n";
}

class Llama3Template : public ChatTemplate {
 public:
  Llama3Template(const TemplateTokens& tokens, bool is_3_1) : tokens_(tokens), is_3_1_(is_3_1) {}

  std::string name() const override { return is_3_1_ ? "llama3_1" : "llama3"; }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    SegmentBuilder builder;
    builder.AddPrompt(tokens_.bos);
    size_t first = 0;
    if (is_3_1_) {
      // 3.1 pulls a leading system message into its own system header.
      std::string system;
      if (conversation[0].role == "system") {
        system = TrimWhitespace(conversation[0].content);
        first = 1;
      }
      builder.AddPrompt(Header("system") +
                        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
                        system + kEndOfTurn);
    }
    for (size_t i = first; i < conversation.size(); ++i) {
      const Message& message = conversation[i];
      std::string body = TrimWhitespace(message.content) + kEndOfTurn;
      if (message.role == "assistant") {
        builder.AddAnswer(Header(message.role), body);
      } else {
        builder.AddPrompt(Header(message.role) + body);
      }
    }
    if (options.add_generation_prompt) builder.AddPrompt(Header("assistant"));
    return builder.Finish(options);
  }

 private:
  TemplateTokens tokens_;
  bool is_3_1_;
};

}  // namespace

std::unique_ptr<ChatTemplate> MakeLlama3Template(const TemplateTokens& tokens) {
  return std::make_unique<Llama3Template>(tokens, /*is_3_1=*/false);
}

std::unique_ptr<ChatTemplate> MakeLlama31Template(const TemplateTokens& tokens) {
  return std::make_unique<Llama3Template>(tokens, /*is_3_1=*/true);
}

}  // namespace fulcrum::data
