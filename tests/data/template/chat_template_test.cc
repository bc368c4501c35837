// Chat templates without the npm reference: recognising the family from
// tokenizer_config.json's chat_template, the errors (unknown template, bad
// roles, Mistral/Gemma alternation), and small hand-checked renderings with
// their target masks. chat_template_reference_test compares with the Jinja.
#include "data/template/chat_template.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/data/template/reference_templates.h"

namespace fulcrum::data {
namespace {

TokenizerConfig WithTemplate(const std::string& jinja) {
  TokenizerConfig config;
  config.present = true;
  config.chat_template = jinja;
  return config;
}

Conversation Conv(std::vector<std::pair<std::string, std::string>> turns) {
  Conversation conversation;
  for (auto& [role, content] : turns) conversation.push_back(Message{role, content});
  return conversation;
}

std::string DetectedName(const std::string& jinja) {
  auto chat_template = CreateChatTemplate("auto", WithTemplate(jinja));
  if (!chat_template.ok()) return "error: " + std::string(chat_template.status().message());
  return (*chat_template)->name();
}

// Distinctive parts of the real templates (the full texts are checked in the
// reference test).
constexpr char kLlama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
constexpr char kQwen25[] =
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
    "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
    "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}";
constexpr char kQwen3[] =
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>' + message.role + "
    "'\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' }}<|im_end|>";
constexpr char kDeepseekV3[] =
    "{{bos_token}}{{ns.system_prompt}}{{'<｜User｜>' + message['content']}}{{'<｜Assistant｜>' "
    "+ message['content'] + '<｜end▁of▁sentence｜>'}}";
constexpr char kGemma[] =
    "{{ bos_token }}{{ '<start_of_turn>' + role + '\n' }}{{ '<end_of_turn>\n' }}";

TEST(ChatTemplateTest, RecognisesEachFamily) {
  EXPECT_EQ(DetectedName(kLlama3), "llama3");
  EXPECT_EQ(DetectedName(testing::kLlama31Jinja), "llama3_1");
  EXPECT_EQ(DetectedName(testing::kChatmlJinja), "chatml");
  EXPECT_EQ(DetectedName(kQwen25), "qwen2_5");
  EXPECT_EQ(DetectedName(kQwen3), "qwen3");
  EXPECT_EQ(DetectedName(kDeepseekV3), "deepseek_v3");
  EXPECT_EQ(DetectedName(testing::kDeepseekV2Jinja), "deepseek_v2");
  EXPECT_EQ(DetectedName(testing::kMistralJinja), "mistral");
  EXPECT_EQ(DetectedName(kGemma), "gemma");
}

TEST(ChatTemplateTest, RejectsRelativesThatRenderDifferently) {
  // Llama-3.2 dates its system header with strftime_now.
  std::string llama32 = std::string(testing::kLlama31Jinja) + "{{ strftime_now('%d %b %Y') }}";
  EXPECT_NE(DetectedName(llama32).find("error"), std::string::npos);
  // DeepSeek-R1 strips and adds <think>.
  std::string r1 = std::string(kDeepseekV3) + "{{'<｜Assistant｜><think>\\n'}}";
  EXPECT_NE(DetectedName(r1).find("error"), std::string::npos);
  // Qwen2's ChatML has its own default system prompt.
  std::string qwen2 = std::string(testing::kChatmlJinja) + "You are a helpful assistant.";
  EXPECT_NE(DetectedName(qwen2).find("error"), std::string::npos);
  // Mistral v0.1's first template had no system message and no spaces.
  EXPECT_NE(DetectedName("{{ bos_token }}{{ '[INST] ' + message['content'] + ' [/INST]' }}")
                .find("error"),
            std::string::npos);
}

TEST(ChatTemplateTest, UnknownTemplateErrorListsTheNames) {
  auto unknown =
      CreateChatTemplate("auto", WithTemplate("{% for m in messages %}{{ m }}{% endfor %}"));
  ASSERT_FALSE(unknown.ok());
  std::string message(unknown.status().message());
  for (const std::string& name : KnownChatTemplates()) {
    EXPECT_NE(message.find(name), std::string::npos) << name << " missing from: " << message;
  }
  EXPECT_NE(message.find("{% for m in messages %}"), std::string::npos) << message;

  auto absent = CreateChatTemplate("auto", TokenizerConfig{});
  ASSERT_FALSE(absent.ok());
  EXPECT_NE(absent.status().message().find("no chat_template"), std::string::npos);
  EXPECT_NE(absent.status().message().find("llama3"), std::string::npos);

  auto misspelt = CreateChatTemplate("lama3", TokenizerConfig{});
  ASSERT_FALSE(misspelt.ok());
  EXPECT_NE(misspelt.status().message().find("'lama3'"), std::string::npos);
  EXPECT_NE(misspelt.status().message().find("deepseek_v2"), std::string::npos);
}

TEST(ChatTemplateTest, EveryNamedTemplateRejectsBadRolesAndEmptyConversations) {
  for (const std::string& name : KnownChatTemplates()) {
    auto chat_template = CreateChatTemplate(name, TokenizerConfig{});
    ASSERT_TRUE(chat_template.ok()) << name;
    EXPECT_EQ((*chat_template)->name(), name);
    auto bad = (*chat_template)->Render(Conv({{"user", "hi"}, {"tool", "42"}}), RenderOptions{});
    ASSERT_FALSE(bad.ok()) << name;
    EXPECT_NE(bad.status().message().find("message 1 has role 'tool'"), std::string::npos)
        << bad.status();
    auto empty = (*chat_template)->Render(Conversation{}, RenderOptions{});
    ASSERT_FALSE(empty.ok()) << name;
    EXPECT_NE(empty.status().message().find("empty conversation"), std::string::npos);
  }
}

TEST(ChatTemplateTest, MistralAndGemmaRequireAlternation) {
  auto mistral = *CreateChatTemplate("mistral", TokenizerConfig{});
  auto two_users = mistral->Render(Conv({{"user", "a"}, {"user", "b"}}), RenderOptions{});
  ASSERT_FALSE(two_users.ok());
  EXPECT_NE(two_users.status().message().find("must alternate user/assistant"), std::string::npos);
  EXPECT_NE(two_users.status().message().find("message 1"), std::string::npos);
  auto assistant_first = mistral->Render(Conv({{"system", "s"}, {"assistant", "a"}}), {});
  ASSERT_FALSE(assistant_first.ok());
  EXPECT_NE(assistant_first.status().message().find("message 1 has role 'assistant'"),
            std::string::npos);
  auto late_system = mistral->Render(Conv({{"user", "a"}, {"system", "s"}}), RenderOptions{});
  ASSERT_FALSE(late_system.ok());
  EXPECT_NE(late_system.status().message().find("Only user and assistant roles"),
            std::string::npos);

  auto gemma = *CreateChatTemplate("gemma", TokenizerConfig{});
  auto gemma_bad = gemma->Render(Conv({{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}}), {});
  ASSERT_FALSE(gemma_bad.ok());
  EXPECT_NE(gemma_bad.status().message().find("must alternate"), std::string::npos);
}

TEST(ChatTemplateTest, Llama3RendersAndMasksAnswers) {
  TokenizerConfig config;
  config.bos_token = "<B>";
  auto llama3 = *CreateChatTemplate("llama3", config);
  Conversation conversation =
      Conv({{"user", " q1 "}, {"assistant", "a1\n"}, {"user", "q2"}, {"assistant", "a2"}});
  auto chat = llama3->Render(conversation, RenderOptions{});
  ASSERT_TRUE(chat.ok());
  const std::string h = "<|end_header_id|>\n\n";
  ASSERT_EQ(chat->segments.size(), 4u);
  EXPECT_EQ(chat->segments[0].text,
            "<B><|start_header_id|>user" + h + "q1<|eot_id|>" + "<|start_header_id|>assistant" + h);
  EXPECT_FALSE(chat->segments[0].is_target);
  EXPECT_EQ(chat->segments[1].text, "a1<|eot_id|>");
  EXPECT_TRUE(chat->segments[1].is_target);
  EXPECT_EQ(chat->segments[3].text, "a2<|eot_id|>");
  EXPECT_TRUE(chat->segments[3].is_target);

  RenderOptions history;
  history.mask_history = true;
  auto last = llama3->Render(conversation, history);
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->segments.size(), 2u);
  EXPECT_FALSE(last->segments[0].is_target);
  EXPECT_EQ(last->segments[1].text, "a2<|eot_id|>");
  EXPECT_EQ(last->Text(), chat->Text());

  RenderOptions generation;
  generation.add_generation_prompt = true;
  auto prompt = llama3->Render(Conv({{"user", "q"}}), generation);
  ASSERT_TRUE(prompt.ok());
  ASSERT_EQ(prompt->segments.size(), 1u);
  EXPECT_EQ(prompt->Text(),
            "<B><|start_header_id|>user" + h + "q<|eot_id|><|start_header_id|>assistant" + h);
}

TEST(ChatTemplateTest, MistralPrependsTheSystemMessage) {
  auto mistral = *CreateChatTemplate("mistral", TokenizerConfig{});
  auto chat = mistral->Render(Conv({{"system", "S"}, {"user", "U"}, {"assistant", "A"}}), {});
  ASSERT_TRUE(chat.ok());
  ASSERT_EQ(chat->segments.size(), 2u);
  EXPECT_EQ(chat->segments[0].text, "<s> [INST] S\n\nU [/INST]");
  EXPECT_EQ(chat->segments[1].text, " A</s>");
  EXPECT_TRUE(chat->segments[1].is_target);
}

TEST(ChatTemplateTest, ChatmlMovesTheHeaderNewlineBeforeLeadingWhitespace) {
  auto chatml = *CreateChatTemplate("chatml", TokenizerConfig{});
  auto chat = chatml->Render(Conv({{"user", "u"}, {"assistant", "\nA"}}), {});
  ASSERT_TRUE(chat.ok());
  ASSERT_EQ(chat->segments.size(), 3u);
  EXPECT_EQ(chat->segments[0].text, "<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant");
  EXPECT_EQ(chat->segments[1].text, "\n\nA<|im_end|>");
  EXPECT_EQ(chat->segments[2].text, "\n");
  EXPECT_FALSE(chat->segments[2].is_target);

  auto qwen25 = *CreateChatTemplate("qwen2_5", TokenizerConfig{});
  auto with_default = qwen25->Render(Conv({{"user", "u"}}), {});
  ASSERT_TRUE(with_default.ok());
  EXPECT_EQ(with_default->Text().rfind("<|im_start|>system\nYou are Qwen", 0), 0u);
}

TEST(ChatTemplateTest, Qwen3ThinkBlocks) {
  auto qwen3 = *CreateChatTemplate("qwen3", TokenizerConfig{});
  auto chat = qwen3->Render(Conv({{"user", "q"},
                                  {"assistant", "<think>r1</think>a1"},
                                  {"user", "q2"},
                                  {"assistant", "a2"}}),
                            {});
  ASSERT_TRUE(chat.ok());
  // Before the last query the think block is dropped; the last turn always
  // carries one (empty when the content has none).
  EXPECT_EQ(chat->Text(),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
            "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\na2"
            "<|im_end|>\n");
  // Python's lstrip('\n') (transformers) keeps a leading space or tab.
  auto spaced = qwen3->Render(Conv({{"user", "q"}, {"assistant", " a\n"}}), {});
  ASSERT_TRUE(spaced.ok());
  EXPECT_EQ(spaced->Text(),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n a\n"
            "<|im_end|>\n");
}

}  // namespace
}  // namespace fulcrum::data
