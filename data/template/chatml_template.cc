#include "data/template/chatml_template.h"

#include "absl/strings/match.h"
#include "core/status.h"

namespace fulcrum::data {
namespace {

constexpr char kQwenDefaultSystem[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

enum class Flavor { kChatml, kQwen25, kQwen3 };

std::string Turn(const Message& message) {
  return "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n";
}

std::string_view LStrip(std::string_view text, char c) {
  while (!text.empty() && text.front() == c) text.remove_prefix(1);
  return text;
}

std::string_view RStrip(std::string_view text, char c) {
  while (!text.empty() && text.back() == c) text.remove_suffix(1);
  return text;
}

// Qwen3's split of an assistant content into reasoning and answer:
//   content   = content.split('</think>')[-1].lstrip('\n')
//   reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
struct Qwen3Answer {
  std::string reasoning;
  std::string content;
};

Qwen3Answer SplitThink(const std::string& content) {
  constexpr std::string_view kClose = "</think>";
  constexpr std::string_view kOpen = "<think>";
  size_t first_close = content.find(kClose);
  if (first_close == std::string::npos) return {"", content};
  size_t last_close = content.rfind(kClose);
  std::string_view view(content);
  std::string_view answer = LStrip(view.substr(last_close + kClose.size()), '\n');
  std::string_view before = RStrip(view.substr(0, first_close), '\n');
  size_t open = before.rfind(kOpen);
  if (open != std::string_view::npos) before = before.substr(open + kOpen.size());
  return {std::string(LStrip(before, '\n')), std::string(answer)};
}

// Index of the last user message that is not a wrapped tool response
// (Qwen3's ns.last_query_index); size()-1 when there is none.
size_t LastQueryIndex(const Conversation& conversation) {
  for (size_t i = conversation.size(); i-- > 0;) {
    const std::string& content = conversation[i].content;
    if (conversation[i].role == "user" && !(absl::StartsWith(content, "<tool_response>") &&
                                            absl::EndsWith(content, "</tool_response>"))) {
      return i;
    }
  }
  return conversation.size() - 1;
}

class ChatmlTemplate : public ChatTemplate {
 public:
  explicit ChatmlTemplate(Flavor flavor) : flavor_(flavor) {}

  std::string name() const override {
    switch (flavor_) {
      case Flavor::kQwen25:
        return "qwen2_5";
      case Flavor::kQwen3:
        return "qwen3";
      case Flavor::kChatml:
        break;
    }
    return "chatml";
  }

  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    FULCRUM_RETURN_IF_ERROR(CheckBasicConversation(name(), conversation));
    SegmentBuilder builder;
    if (flavor_ == Flavor::kQwen25 && conversation[0].role != "system") {
      builder.AddPrompt(Turn(Message{"system", kQwenDefaultSystem}));
    }
    size_t last_query = LastQueryIndex(conversation);
    for (size_t i = 0; i < conversation.size(); ++i) {
      const Message& message = conversation[i];
      if (message.role != "assistant") {
        builder.AddPrompt(Turn(message));
        continue;
      }
      std::string body = message.content;
      if (flavor_ == Flavor::kQwen3) body = Qwen3Body(message.content, i, last_query, conversation);
      builder.AddAnswer("<|im_start|>assistant\n", body + "<|im_end|>");
      builder.AddPrompt("\n");
    }
    if (options.add_generation_prompt) builder.AddPrompt("<|im_start|>assistant\n");
    return builder.Finish(options);
  }

 private:
  // What Qwen3 writes after "<|im_start|>assistant\n" for assistant message i.
  static std::string Qwen3Body(const std::string& content, size_t i, size_t last_query,
                               const Conversation& conversation) {
    Qwen3Answer split = SplitThink(content);
    bool is_last = i + 1 == conversation.size();
    if (i > last_query && (is_last || !split.reasoning.empty())) {
      std::string reasoning(RStrip(LStrip(split.reasoning, '\n'), '\n'));
      return "<think>\n" + reasoning + "\n</think>\n\n" + std::string(LStrip(split.content, '\n'));
    }
    return split.content;
  }

  Flavor flavor_;
};

}  // namespace

std::unique_ptr<ChatTemplate> MakeChatmlTemplate() {
  return std::make_unique<ChatmlTemplate>(Flavor::kChatml);
}
std::unique_ptr<ChatTemplate> MakeQwen25Template() {
  return std::make_unique<ChatmlTemplate>(Flavor::kQwen25);
}
std::unique_ptr<ChatTemplate> MakeQwen3Template() {
  return std::make_unique<ChatmlTemplate>(Flavor::kQwen3);
}

}  // namespace fulcrum::data
