// The text dataset's formats: text, instruction, messages and ShareGPT records
// become ids and labels.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/data/dataset/text_dataset_fixtures.h"

namespace fulcrum::data::text_dataset_test {
namespace {

TEST(ParseTextFormatTest, KnownNames) {
  EXPECT_EQ(*ParseTextFormat("text"), TextFormat::kText);
  EXPECT_EQ(*ParseTextFormat("instruction"), TextFormat::kInstruction);
  EXPECT_EQ(*ParseTextFormat("messages"), TextFormat::kMessages);
  EXPECT_EQ(*ParseTextFormat("sharegpt"), TextFormat::kShareGpt);
}

TEST(ParseTextFormatTest, UnknownNameListsTheOptions) {
  auto format = ParseTextFormat("alpaca");
  ASSERT_FALSE(format.ok());
  EXPECT_NE(format.status().message().find("\"alpaca\""), std::string::npos);
  EXPECT_NE(format.status().message().find("text, instruction, messages, sharegpt"),
            std::string::npos);
}

TEST(TextFormatTest, TextPlusEosAllTargets) {
  auto tokenizer = MakeTokenizer();
  const std::string path = WriteJsonl("{\"text\": \"hello world\"}\n\n{\"text\": \"hi\"}\n");
  auto loaded = Load({{path, TextFormat::kText, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->samples.size(), 2u);
  std::vector<int64_t> expected = Widen(tokenizer->Encode("hello world", false));
  EXPECT_EQ(expected.front(), 259);  // "hello" merged
  expected.push_back(kEndOfText);
  EXPECT_EQ(loaded->samples[0].input_ids, expected);
  EXPECT_EQ(loaded->samples[0].labels, expected);
  EXPECT_EQ(loaded->samples[0].line, 1);
  EXPECT_EQ(loaded->samples[1].line, 3);
  EXPECT_EQ(loaded->samples[1].input_ids, (std::vector<int64_t>{'h', 'i', kEndOfText}));
  EXPECT_EQ(loaded->stats.records, 2);
  EXPECT_EQ(loaded->stats.tokens, static_cast<int64_t>(expected.size()) + 3);
}

TEST(TextFormatTest, NoEosTokenKnownAppendsNothing) {
  auto tokenizer = MakeTokenizer(TokenizerWith(false, false, /*eos=*/false));
  auto loaded = Load({{WriteJsonl("{\"text\": \"hi\"}\n"), TextFormat::kText, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{'h', 'i'}));
}

TEST(TextFormatTest, AddBosTokenPrependsBos) {
  auto tokenizer = MakeTokenizer(TokenizerWith(/*add_bos_token=*/true, false, true));
  auto loaded = Load({{WriteJsonl("{\"text\": \"hi\"}\n"), TextFormat::kText, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{kBos, 'h', 'i', kEndOfText}));
  EXPECT_EQ(loaded->samples[0].labels, loaded->samples[0].input_ids);
}

TEST(TextFormatTest, PostProcessorBosIsNotDoubled) {
  for (const bool add_bos_token : {false, true}) {
    auto tokenizer = MakeTokenizer(TokenizerWith(add_bos_token, /*bos_post_processor=*/true, true));
    ASSERT_EQ(tokenizer->Encode("hi", true).front(), kBos);
    auto loaded = Load({{WriteJsonl("{\"text\": \"hi\"}\n"), TextFormat::kText, {}}}, *tokenizer);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{kBos, 'h', 'i', kEndOfText}))
        << add_bos_token;
  }
}

TEST(TextFormatTest, SpecialTokenStringsInTextAreMatched) {
  auto tokenizer = MakeTokenizer();
  auto loaded =
      Load({{WriteJsonl("{\"text\": \"a<|im_end|>b\", \"other\": 1}\n"), TextFormat::kText, {}}},
           *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{'a', kImEnd, 'b', kEndOfText}));
}

TEST(TextFormatTest, MappedTextField) {
  auto tokenizer = MakeTokenizer();
  auto loaded = Load(
      {{WriteJsonl("{\"content\": \"hi\"}\n"), TextFormat::kText, FieldMap{{"text", "content"}}}},
      *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{'h', 'i', kEndOfText}));
}

// Expected ids/labels of a FakeChatTemplate rendering of `turns` (role, content).
Expected ExpectedChat(const Tokenizer& tokenizer,
                      const std::vector<std::pair<std::string, std::string>>& turns) {
  Expected expected;
  std::string prompt;
  for (const auto& [role, content] : turns) {
    prompt += "<|im_start|>" + role + "\n";
    if (role != "assistant") {
      prompt += content + "<|im_end|>\n";
      continue;
    }
    expected.Add(tokenizer, prompt, false);
    expected.Add(tokenizer, content + "<|im_end|>", true);
    prompt = "\n";
  }
  expected.Add(tokenizer, prompt, false);
  return expected;
}

void ExpectSample(const Sample& sample, const Expected& expected) {
  EXPECT_EQ(sample.input_ids, expected.ids);
  EXPECT_EQ(sample.labels, expected.labels);
}

TEST(InstructionFormatTest, InstructionInputAndSystem) {
  auto tokenizer = MakeTokenizer();
  const std::string path = WriteJsonl(
      "{\"instruction\": \"Say hello\", \"input\": \"to me\", \"output\": \"hello\", "
      "\"system\": \"Be brief\"}\n"
      "{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"}\n"
      "{\"instruction\": \"Say hi\", \"input\": null, \"output\": \"hi\", \"system\": null}\n");
  auto loaded = Load({{path, TextFormat::kInstruction, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->samples.size(), 3u);
  ExpectSample(loaded->samples[0], ExpectedChat(*tokenizer, {{"system", "Be brief"},
                                                             {"user", "Say hello\n\nto me"},
                                                             {"assistant", "hello"}}));
  const Expected short_one = ExpectedChat(*tokenizer, {{"user", "Say hi"}, {"assistant", "hi"}});
  ExpectSample(loaded->samples[1], short_one);
  ExpectSample(loaded->samples[2], short_one);
  EXPECT_EQ(loaded->samples[1].input_ids[0], kImStart);
  // The target is exactly the answer and its end-of-turn token.
  std::vector<int32_t> targets;
  for (const int64_t label : loaded->samples[1].labels) {
    if (label != kIgnoreIndex) targets.push_back(static_cast<int32_t>(label));
  }
  EXPECT_EQ(targets, (std::vector<int32_t>{'h', 'i', kImEnd}));
}

TEST(InstructionFormatTest, MappedFieldNames) {
  auto tokenizer = MakeTokenizer();
  const std::string path =
      WriteJsonl("{\"prompt\": \"Say hi\", \"context\": \"now\", \"response\": \"hi\"}\n");
  const FieldMap fields = {{"instruction", "prompt"}, {"input", "context"}, {"output", "response"}};
  auto loaded = Load({{path, TextFormat::kInstruction, fields}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSample(loaded->samples[0],
               ExpectedChat(*tokenizer, {{"user", "Say hi\n\nnow"}, {"assistant", "hi"}}));
}

const std::vector<std::pair<std::string, std::string>> kMessagesTurns = {
    {"system", "sys"}, {"user", "q1"}, {"assistant", "a1"}, {"user", "q2"}, {"assistant", "a2"}};

TEST(MessagesFormatTest, MultiTurnLabelsFollowTargetSegments) {
  auto tokenizer = MakeTokenizer();
  auto loaded = Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->samples.size(), 1u);
  ExpectSample(loaded->samples[0], ExpectedChat(*tokenizer, kMessagesTurns));
}

TEST(MessagesFormatTest, MappedListRoleAndContentNames) {
  auto tokenizer = MakeTokenizer();
  const std::string path = WriteJsonl(
      "{\"chat\": [{\"speaker\": \"user\", \"text\": \"q\"}, "
      "{\"speaker\": \"assistant\", \"text\": \"a\"}]}\n");
  const FieldMap fields = {{"messages", "chat"}, {"role", "speaker"}, {"content", "text"}};
  auto loaded = Load({{path, TextFormat::kMessages, fields}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSample(loaded->samples[0], ExpectedChat(*tokenizer, {{"user", "q"}, {"assistant", "a"}}));
}

TEST(MessagesFormatTest, RenderOptionsReachTheTemplate) {
  auto tokenizer = MakeTokenizer();
  TokenizeOptions options;
  options.render.train_on_prompt = true;
  auto loaded = Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->samples[0].labels, loaded->samples[0].input_ids);

  options.render.train_on_prompt = false;
  options.render.mask_history = true;
  loaded = Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::vector<int64_t> targets;
  for (const int64_t label : loaded->samples[0].labels) {
    if (label != kIgnoreIndex) targets.push_back(label);
  }
  EXPECT_EQ(targets, (std::vector<int64_t>{'a', '2', kImEnd}));
}

TEST(MessagesFormatTest, AddBosTokenPrependsANonTargetBos) {
  auto tokenizer = MakeTokenizer(TokenizerWith(/*add_bos_token=*/true, false, true));
  auto loaded = Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Expected expected;
  expected.AddId(kBos, false);
  const Expected chat = ExpectedChat(*tokenizer, kMessagesTurns);
  expected.ids.insert(expected.ids.end(), chat.ids.begin(), chat.ids.end());
  expected.labels.insert(expected.labels.end(), chat.labels.begin(), chat.labels.end());
  ExpectSample(loaded->samples[0], expected);
}

TEST(MessagesFormatTest, BosRenderedByTheTemplateIsNotDoubled) {
  auto tokenizer = MakeTokenizer(TokenizerWith(/*add_bos_token=*/true, false, true));
  const FakeChatTemplate with_bos("<s>");
  auto loaded =
      Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer, {}, &with_bos);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_GE(loaded->samples[0].input_ids.size(), 2u);
  EXPECT_EQ(loaded->samples[0].input_ids[0], kBos);
  EXPECT_NE(loaded->samples[0].input_ids[1], kBos);
}

TEST(ShareGptFormatTest, FromValuesMapToRoles) {
  auto tokenizer = MakeTokenizer();
  const std::string path = WriteJsonl(
      "{\"conversations\": [{\"from\": \"system\", \"value\": \"sys\"}, "
      "{\"from\": \"human\", \"value\": \"q1\"}, {\"from\": \"gpt\", \"value\": \"a1\"}, "
      "{\"from\": \"user\", \"value\": \"q2\"}, {\"from\": \"assistant\", \"value\": \"a2\"}]}\n");
  auto loaded = Load({{path, TextFormat::kShareGpt, {}}}, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSample(loaded->samples[0], ExpectedChat(*tokenizer, kMessagesTurns));
}

TEST(MessagesFormatTest, RealChatmlTemplateMasksMatchItsSegments) {
  auto tokenizer = MakeTokenizer();
  auto chatml = CreateChatTemplate("chatml", tokenizer->config());
  ASSERT_TRUE(chatml.ok()) << chatml.status();
  auto loaded =
      Load({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}}, *tokenizer, {}, chatml->get());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Conversation conversation;
  for (const auto& [role, content] : kMessagesTurns) conversation.push_back({role, content});
  auto chat = (*chatml)->Render(conversation, RenderOptions{});
  ASSERT_TRUE(chat.ok()) << chat.status();
  Expected expected;
  std::string targets;
  for (const RenderedSegment& segment : chat->segments) {
    expected.Add(*tokenizer, segment.text, segment.is_target);
    if (segment.is_target) targets += segment.text;
  }
  ExpectSample(loaded->samples[0], expected);
  // Segment-wise ids are the whole text's ids.
  EXPECT_EQ(loaded->samples[0].input_ids, Widen(tokenizer->Encode(chat->Text(), false)));
  std::vector<int32_t> target_ids;
  for (const int64_t label : loaded->samples[0].labels) {
    if (label != kIgnoreIndex) target_ids.push_back(static_cast<int32_t>(label));
  }
  EXPECT_EQ(tokenizer->Decode(target_ids, false), targets);
  EXPECT_NE(targets.find("a1<|im_end|>"), std::string::npos) << targets;
  EXPECT_NE(targets.find("a2<|im_end|>"), std::string::npos) << targets;
  EXPECT_EQ(targets.find("q1"), std::string::npos) << targets;
}

// --- bad inputs, one test each ---

// Llama-2/Mistral tokenizers prepend "▁" to every stretch of text between
// special tokens, so an answer encoded on its own differs from the answer
// inside the whole text. The sample must be the whole text's ids, and the
// targets exactly the answer's tokens there.
TEST(MessagesFormatTest, PrependNormalizerSampleIsTheWholeTextTokenization) {
  json tokenizer_json = json::parse(TinyTokenizerJson(/*bos_post_processor=*/false));
  tokenizer_json["normalizer"] = {{"type", "Prepend"}, {"prepend", "\u2581"}};
  TokenizerConfig config;
  config.eos_token = "<|endoftext|>";
  auto tokenizer = Tokenizer::FromJson(tokenizer_json.dump(), "test", config);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string whole =
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n";
  ASSERT_NE((*tokenizer)->Encode("hello<|im_end|>", false),
            (std::vector<int32_t>{259, kImEnd}));  // the premise: alone it gains "▁"
  const std::string path = WriteJsonl(
      R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})"
      "\n");
  auto loaded = Load({{path, TextFormat::kMessages, {}}}, **tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Sample& sample = loaded->samples.at(0);
  EXPECT_EQ(sample.input_ids, Widen((*tokenizer)->Encode(whole, false)));
  std::vector<int64_t> targets;
  for (const int64_t label : sample.labels) {
    if (label != kIgnoreIndex) targets.push_back(label);
  }
  EXPECT_EQ(targets, (std::vector<int64_t>{259, kImEnd}));
}

}  // namespace
}  // namespace fulcrum::data::text_dataset_test
