#include "data/template/chat_template.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "data/template/chatml_template.h"
#include "data/template/deepseek_template.h"
#include "data/template/llama3_template.h"
#include "data/template/mistral_template.h"
#include "data/template/segment_builder.h"

namespace fulcrum::data {
namespace {

bool Has(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// The family a tokenizer_config.json chat_template is, or "" when it is none
// of the known ones. Each rule asks for the family's distinctive literals and
// rejects the close relatives that render differently (Llama-3.2's dated
// system header, DeepSeek-R1's think handling, Mistral v0.1's first template
// without the system message, ChatML variants with their own system prompt).
std::string DetectFamily(const std::string& jinja) {
  if (Has(jinja, "<|start_header_id|>") && Has(jinja, "<|eot_id|>")) {
    if (!Has(jinja, "Cutting Knowledge Date")) return "llama3";
    if (Has(jinja, "26 Jul 2024") && !Has(jinja, "strftime_now")) return "llama3_1";
    return "";
  }
  if (Has(jinja, "<|im_start|>") && Has(jinja, "<|im_end|>")) {
    if (Has(jinja, "<think>")) return "qwen3";
    if (Has(jinja, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")) {
      return "qwen2_5";
    }
    if (!Has(jinja, "You are") && !Has(jinja, "tool")) return "chatml";
    return "";
  }
  if (Has(jinja, "<｜User｜>") && Has(jinja, "<｜Assistant｜>")) {
    return Has(jinja, "think>") ? "" : "deepseek_v3";
  }
  if (Has(jinja, "User: ") && Has(jinja, "Assistant: ") && Has(jinja, "eos_token")) {
    return "deepseek_v2";
  }
  if (Has(jinja, "[INST]") && Has(jinja, "[/INST]")) {
    bool spaced = Has(jinja, "' [INST] '") || Has(jinja, "\" [INST] \"");
    return spaced && Has(jinja, "system_message") && !Has(jinja, "[AVAILABLE_TOOLS]") ? "mistral"
                                                                                      : "";
  }
  if (Has(jinja, "<start_of_turn>") && Has(jinja, "<end_of_turn>")) return "gemma";
  return "";
}

std::string Preview(const std::string& jinja) {
  constexpr size_t kMax = 80;
  std::string head = jinja.substr(0, kMax);
  for (char& c : head) {
    if (c == '\n') c = ' ';
  }
  return jinja.size() > kMax ? head + "..." : head;
}

std::string KnownList() { return absl::StrJoin(KnownChatTemplates(), ", "); }

// Named family -> template; the special tokens come from `config`, else the
// family's own.
std::unique_ptr<ChatTemplate> MakeFamily(const std::string& name, const TokenizerConfig& config) {
  auto tokens = [&config](const char* bos, const char* eos) {
    return TemplateTokens{config.bos_token.value_or(bos), config.eos_token.value_or(eos)};
  };
  if (name == "llama3") return MakeLlama3Template(tokens("<|begin_of_text|>", "<|eot_id|>"));
  if (name == "llama3_1") return MakeLlama31Template(tokens("<|begin_of_text|>", "<|eot_id|>"));
  if (name == "chatml") return MakeChatmlTemplate();
  if (name == "qwen2_5") return MakeQwen25Template();
  if (name == "qwen3") return MakeQwen3Template();
  if (name == "deepseek_v3") {
    return MakeDeepseekV3Template(tokens("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"));
  }
  if (name == "deepseek_v2") {
    return MakeDeepseekV2Template(tokens("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"));
  }
  if (name == "mistral") return MakeMistralTemplate(tokens("<s>", "</s>"));
  if (name == "gemma") return MakeGemmaTemplate(tokens("<bos>", "<eos>"));
  return nullptr;
}

}  // namespace

std::string RenderedChat::Text() const {
  std::string text;
  for (const RenderedSegment& segment : segments) text += segment.text;
  return text;
}

std::vector<std::string> KnownChatTemplates() {
  return {"llama3",      "llama3_1",    "chatml",  "qwen2_5", "qwen3",
          "deepseek_v3", "deepseek_v2", "mistral", "gemma"};
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> CreateChatTemplate(const std::string& name,
                                                                 const TokenizerConfig& config) {
  if (name != "auto") {
    std::unique_ptr<ChatTemplate> chat_template = MakeFamily(name, config);
    if (chat_template == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown chat template '", name, "'; known: auto, ", KnownList()));
    }
    return chat_template;
  }
  if (config.chat_template.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template 'auto': tokenizer_config.json has no chat_template; set "
                     "data.chat_template to one of: ",
                     KnownList()));
  }
  std::string family = DetectFamily(config.chat_template);
  if (family.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chat template 'auto': the chat_template in tokenizer_config.json is not one fulcrum "
        "knows (it starts \"",
        Preview(config.chat_template), "\"); set data.chat_template to one of: ", KnownList()));
  }
  return MakeFamily(family, config);
}

}  // namespace fulcrum::data
