#include "data/dataset/text_dataset.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer/byte_level_alphabet.h"
#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;
using nlohmann::json;

constexpr int32_t kEndOfText = 260, kImStart = 261, kImEnd = 262, kBos = 263;

// A tiny byte-level BPE: ids 0..255 are the bytes (ByteLevel alphabet), four
// merges build "hello" (256..259), then the added special tokens.
// `bos_post_processor`: a TemplateProcessing that puts <s> in front.
std::string TinyTokenizerJson(bool bos_post_processor) {
  json vocab = json::object();
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab[alphabet.Encode(static_cast<uint8_t>(b))] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  json added = json::array();
  const std::vector<std::string> specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"};
  for (size_t i = 0; i < specials.size(); ++i) {
    added.push_back({{"id", 260 + i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  json post = byte_level;
  if (bos_post_processor) {
    post = {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {kBos}}, {"tokens", {"<s>"}}}}}}};
  }
  const json tokenizer = {{"version", "1.0"},
                          {"truncation", nullptr},
                          {"padding", nullptr},
                          {"added_tokens", added},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", byte_level},
                          {"post_processor", post},
                          {"decoder", byte_level},
                          {"model",
                           {{"type", "BPE"},
                            {"dropout", nullptr},
                            {"unk_token", nullptr},
                            {"continuing_subword_prefix", nullptr},
                            {"end_of_word_suffix", nullptr},
                            {"fuse_unk", false},
                            {"byte_fallback", false},
                            {"ignore_merges", false},
                            {"vocab", vocab},
                            {"merges", {"h e", "l l", "he ll", "hell o"}}}}};
  return tokenizer.dump();
}

struct TokenizerSetup {
  bool add_bos_token = false;
  bool bos_post_processor = false;
  bool eos = true;
};

TokenizerSetup TokenizerWith(bool add_bos_token, bool bos_post_processor, bool eos) {
  TokenizerSetup setup;
  setup.add_bos_token = add_bos_token;
  setup.bos_post_processor = bos_post_processor;
  setup.eos = eos;
  return setup;
}

std::shared_ptr<const Tokenizer> MakeTokenizer(const TokenizerSetup& setup = {}) {
  TokenizerConfig config;
  config.bos_token = "<s>";
  if (setup.eos) config.eos_token = "<|endoftext|>";
  config.add_bos_token = setup.add_bos_token;
  config.present = true;
  auto tokenizer = Tokenizer::FromJson(TinyTokenizerJson(setup.bos_post_processor), "test", config);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *tokenizer;
}

// A ChatML-shaped template written here so that these tests check the
// dataset code alone: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message,
// where an assistant's "CONTENT<|im_end|>" is the target. `prefix` is
// rendered first (to test the BOS rule). Rejects conversations that do not
// end with an assistant turn.
class FakeChatTemplate : public ChatTemplate {
 public:
  explicit FakeChatTemplate(std::string prefix = "") : prefix_(std::move(prefix)) {}
  std::string name() const override { return "fake"; }
  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    if (conversation.empty() || conversation.back().role != "assistant") {
      return absl::InvalidArgumentError("the last message must be the assistant's");
    }
    RenderedChat chat;
    std::string prompt = prefix_;
    int assistants_left = 0;
    for (const Message& m : conversation) assistants_left += m.role == "assistant";
    for (const Message& m : conversation) {
      prompt += "<|im_start|>" + m.role + "\n";
      if (m.role != "assistant") {
        prompt += m.content + "<|im_end|>\n";
        continue;
      }
      --assistants_left;
      const bool target = options.train_on_prompt || !options.mask_history || assistants_left == 0;
      chat.segments.push_back({prompt, options.train_on_prompt});
      chat.segments.push_back({m.content + "<|im_end|>", target});
      prompt = "\n";
    }
    chat.segments.push_back({prompt, options.train_on_prompt});
    return chat;
  }

 private:
  std::string prefix_;
};

// NOTE: ScratchDir() empties the test's directory on every call; tests that
// need several files pass the directory.
std::string WriteJsonl(const std::string& text, const std::string& dir = ScratchDir(),
                       const std::string& name = "data.jsonl") {
  const std::string path = dir + "/" + name;
  WriteFile(path, text);
  return path;
}

std::vector<int64_t> Widen(const std::vector<int32_t>& ids) {
  return std::vector<int64_t>(ids.begin(), ids.end());
}

// ids and labels expected from segments (text, is_target) tokenized one by one.
struct Expected {
  std::vector<int64_t> ids, labels;
  void Add(const Tokenizer& tokenizer, const std::string& text, bool target) {
    for (const int32_t id : tokenizer.Encode(text, false)) AddId(id, target);
  }
  void AddId(int64_t id, bool target) {
    ids.push_back(id);
    labels.push_back(target ? id : kIgnoreIndex);
  }
};

absl::StatusOr<LoadedSamples> Load(const std::vector<DatasetSource>& sources,
                                   const Tokenizer& tokenizer, const TokenizeOptions& options = {},
                                   const ChatTemplate* chat_template = nullptr) {
  static const FakeChatTemplate kDefaultTemplate;
  return LoadTextDataset(sources, tokenizer,
                         chat_template != nullptr ? chat_template : &kDefaultTemplate, options);
}

// Loads one source of `format` holding `text` and expects the error to name
// "PATH:LINE: " and contain `what`.
void ExpectError(const std::string& text, TextFormat format, int line, const std::string& what,
                 const FieldMap& fields = {}) {
  const std::string path = WriteJsonl(text);
  auto loaded = Load({{path, format, fields}}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok()) << text;
  const std::string message(loaded.status().message());
  EXPECT_NE(message.find(path + ":" + std::to_string(line) + ": "), std::string::npos) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

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

constexpr char kMessagesLine[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, "
    "{\"role\": \"user\", \"content\": \"q1\"}, {\"role\": \"assistant\", \"content\": \"a1\"}, "
    "{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"a2\"}]}\n";

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

TEST(TextDatasetErrorTest, InvalidJsonNamesFileAndLine) {
  ExpectError("{\"text\": \"a\"}\n\n{\"text\": \n", TextFormat::kText, 3, "invalid JSON");
}

TEST(TextDatasetErrorTest, NotAnObject) {
  ExpectError("[\"text\"]\n", TextFormat::kText, 1, "expected a JSON object, got array");
}

TEST(TextDatasetErrorTest, InvalidUtf8GivesByteOffset) {
  ExpectError("{\"text\": \"a\"}\n{\"text\": \"\xc3\x28\"}\n", TextFormat::kText, 2,
              "invalid UTF-8 at byte 10");
}

TEST(TextDatasetErrorTest, MissingTextField) {
  ExpectError("{\"txt\": \"a\"}\n", TextFormat::kText, 1, "missing field \"text\"");
}

TEST(TextDatasetErrorTest, MissingMappedFieldNamesBothNames) {
  ExpectError("{\"instruction\": \"a\", \"output\": \"b\"}\n", TextFormat::kInstruction, 1,
              "missing field \"prompt\" (mapped from \"instruction\")",
              {{"instruction", "prompt"}});
}

TEST(TextDatasetErrorTest, MissingOutputField) {
  ExpectError("{\"instruction\": \"a\"}\n", TextFormat::kInstruction, 1,
              "missing field \"output\"");
}

TEST(TextDatasetErrorTest, MistypedField) {
  ExpectError("{\"text\": 5}\n", TextFormat::kText, 1, "field \"text\" is not a string (number)");
}

TEST(TextDatasetErrorTest, MistypedOptionalField) {
  ExpectError("{\"instruction\": \"a\", \"input\": [1], \"output\": \"b\"}\n",
              TextFormat::kInstruction, 1, "field \"input\" is not a string (array)");
}

TEST(TextDatasetErrorTest, MessagesNotAList) {
  ExpectError("{\"messages\": \"hi\"}\n", TextFormat::kMessages, 1,
              "field \"messages\" is not a list (string)");
}

TEST(TextDatasetErrorTest, EmptyMessages) {
  ExpectError("{\"messages\": []}\n", TextFormat::kMessages, 1, "empty list");
}

TEST(TextDatasetErrorTest, MessageMissingContent) {
  ExpectError("{\"messages\": [{\"role\": \"user\"}]}\n", TextFormat::kMessages, 1,
              "messages[0]: missing field \"content\"");
}

TEST(TextDatasetErrorTest, UnknownRole) {
  ExpectError(
      "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, "
      "{\"role\": \"tool\", \"content\": \"x\"}]}\n",
      TextFormat::kMessages, 1, "messages[1].role: unknown role \"tool\"");
}

TEST(TextDatasetErrorTest, UnknownShareGptFrom) {
  ExpectError("{\"conversations\": [{\"from\": \"bot\", \"value\": \"x\"}]}\n",
              TextFormat::kShareGpt, 1, "conversations[0].from: unknown role \"bot\"");
}

TEST(TextDatasetErrorTest, ConversationTheTemplateRejects) {
  ExpectError("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n", TextFormat::kMessages,
              1, "the last message must be the assistant's");
}

TEST(TextDatasetErrorTest, UnreadableFile) {
  const std::string path = ScratchDir() + "/absent.jsonl";
  auto loaded = Load({{path, TextFormat::kText, {}}}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path + ": cannot open"), std::string::npos)
      << loaded.status();
}

TEST(TextDatasetErrorTest, ConversationFormatWithoutTemplate) {
  auto loaded = LoadTextDataset({{WriteJsonl(kMessagesLine), TextFormat::kMessages, {}}},
                                *MakeTokenizer(), nullptr, {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("needs a chat template"), std::string::npos)
      << loaded.status();
}

TEST(TextDatasetErrorTest, NonPositiveWeight) {
  DatasetSource source{WriteJsonl("{\"text\": \"a\"}\n"), TextFormat::kText, {}, 0.0};
  auto loaded = Load({source}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("weight = 0 must be > 0"), std::string::npos)
      << loaded.status();
}

TEST(TextDatasetErrorTest, UnknownFieldMapKey) {
  const std::string path = WriteJsonl("{\"text\": \"a\"}\n");
  auto loaded = Load({{path, TextFormat::kText, FieldMap{{"txt", "body"}}}}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path + ": fields: unknown key \"txt\""),
            std::string::npos)
      << loaded.status();
}

TEST(TextDatasetErrorTest, EmptyFileHasNoUsableSamples) {
  const std::string path = WriteJsonl("\n\n");
  auto loaded = Load({{path, TextFormat::kText, {}}}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("no usable samples in " + path + ": 0 records"),
            std::string::npos)
      << loaded.status();
}

TEST(TextDatasetErrorTest, EmptyTextWithoutSpecialTokensGivesNoTokens) {
  auto tokenizer = MakeTokenizer(TokenizerWith(false, false, /*eos=*/false));
  const std::string path = WriteJsonl("{\"text\": \"\"}\n");
  auto loaded = Load({{path, TextFormat::kText, {}}}, *tokenizer);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path + ":1: the record gives no tokens"),
            std::string::npos)
      << loaded.status();
}

// --- policies ---

TEST(TextDatasetPolicyTest, SkipPolicyCountsBadRecords) {
  const std::string path = WriteJsonl(
      "{\"text\": \"a\"}\n"
      "not json\n"
      "\n"
      "{\"text\": 1}\n"
      "{\"text\": \"b\xff\"}\n"
      "{\"text\": \"c\"}\n");
  TokenizeOptions options;
  options.on_error = ErrorPolicy::kSkip;
  auto loaded = Load({{path, TextFormat::kText, {}}}, *MakeTokenizer(), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->stats.records, 5);
  EXPECT_EQ(loaded->stats.skipped, 3);
  ASSERT_EQ(loaded->samples.size(), 2u);
  EXPECT_EQ(loaded->samples[0].line, 1);
  EXPECT_EQ(loaded->samples[1].line, 6);
}

TEST(TextDatasetPolicyTest, AllSkippedIsNoUsableSamplesWithCounts) {
  TokenizeOptions options;
  options.on_error = ErrorPolicy::kSkip;
  auto loaded =
      Load({{WriteJsonl("x\n{\"y\": 1}\n"), TextFormat::kText, {}}}, *MakeTokenizer(), options);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("no usable samples"), std::string::npos);
  EXPECT_NE(loaded.status().message().find("2 records, 2 skipped, 0 dropped"), std::string::npos)
      << loaded.status();
}

TEST(TextDatasetPolicyTest, TruncateCutsAndCounts) {
  TokenizeOptions options;
  options.seq_len = 4;
  auto loaded =
      Load({{WriteJsonl("{\"text\": \"abcdefg\"}\n{\"text\": \"ab\"}\n"), TextFormat::kText, {}}},
           *MakeTokenizer(), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->stats.truncated, 1);
  EXPECT_EQ(loaded->stats.dropped, 0);
  EXPECT_EQ(loaded->samples[0].input_ids, (std::vector<int64_t>{'a', 'b', 'c', 'd'}));
  EXPECT_EQ(loaded->samples[0].labels.size(), 4u);
  EXPECT_EQ(loaded->samples[1].input_ids, (std::vector<int64_t>{'a', 'b', kEndOfText}));
  EXPECT_EQ(loaded->stats.tokens, 7);
}

TEST(TextDatasetPolicyTest, DropRemovesAndCounts) {
  TokenizeOptions options;
  options.seq_len = 4;
  options.overflow = OverflowPolicy::kDrop;
  auto loaded =
      Load({{WriteJsonl("{\"text\": \"abcdefg\"}\n{\"text\": \"ab\"}\n"), TextFormat::kText, {}}},
           *MakeTokenizer(), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->stats.dropped, 1);
  EXPECT_EQ(loaded->stats.truncated, 0);
  ASSERT_EQ(loaded->samples.size(), 1u);
  EXPECT_EQ(loaded->samples[0].line, 2);
}

TEST(TextDatasetPolicyTest, AllDroppedIsNoUsableSamplesWithCounts) {
  TokenizeOptions options;
  options.seq_len = 2;
  options.overflow = OverflowPolicy::kDrop;
  auto loaded = Load({{WriteJsonl("{\"text\": \"abc\"}\n"), TextFormat::kText, {}}},
                     *MakeTokenizer(), options);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("1 records, 0 skipped, 1 dropped"), std::string::npos)
      << loaded.status();
}

TEST(TextDatasetPolicyTest, BadSeqLen) {
  TokenizeOptions options;
  options.seq_len = 0;
  auto loaded = Load({{WriteJsonl("{\"text\": \"abc\"}\n"), TextFormat::kText, {}}},
                     *MakeTokenizer(), options);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("seq_len"), std::string::npos);
}

// --- mixtures and threads ---

std::string NumberedTexts(const std::string& tag, int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "{\"text\": \"" + tag + std::to_string(i) + "\"}\n";
  return text;
}

TEST(TextDatasetMixtureTest, WeightsRepeatAndSubsampleBySource) {
  auto tokenizer = MakeTokenizer();
  const std::string dir = ScratchDir();
  const std::string a = WriteJsonl(NumberedTexts("a", 3), dir, "a.jsonl");
  const std::string b = WriteJsonl(NumberedTexts("b", 10), dir, "b.jsonl");
  const std::vector<DatasetSource> sources = {{a, TextFormat::kText, {}, 2.0},
                                              {b, TextFormat::kText, {}, 0.4}};
  auto loaded = Load(sources, *tokenizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->samples.size(), 6u + 4u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(loaded->samples[i].input_ids[0], 'a') << i;
  for (size_t i = 6; i < 10; ++i) EXPECT_EQ(loaded->samples[i].input_ids[0], 'b') << i;
  EXPECT_EQ(loaded->stats.records, 13);
  // Same seed, same choice; the tokens count covers the repeats.
  auto again = Load(sources, *tokenizer);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(again->samples[i].line, loaded->samples[i].line);
  EXPECT_EQ(loaded->stats.tokens, 6 * 3 + 4 * 3);
}

TEST(TextDatasetMixtureTest, SeedChangesTheFractionalChoice) {
  auto tokenizer = MakeTokenizer();
  const std::vector<DatasetSource> sources = {
      {WriteJsonl(NumberedTexts("b", 20)), TextFormat::kText, {}, 0.25}};
  const auto lines = [&](uint64_t seed) {
    TokenizeOptions options;
    options.seed = seed;
    auto loaded = Load(sources, *tokenizer, options);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    std::vector<int64_t> result;
    for (const Sample& s : loaded->samples) result.push_back(s.line);
    return result;
  };
  const std::vector<int64_t> first = lines(1);
  EXPECT_EQ(first.size(), 5u);
  bool any_different = false;
  for (uint64_t seed = 2; seed < 6; ++seed) any_different |= lines(seed) != first;
  EXPECT_TRUE(any_different);
}

TEST(TextDatasetThreadsTest, OutputDoesNotDependOnThreadCount) {
  auto tokenizer = MakeTokenizer();
  // More records than one tokenization chunk (2048), mixed formats.
  std::string text;
  for (int i = 0; i < 2300; ++i) {
    text += "{\"text\": \"hello " + std::to_string(i * 7919) + " world\"}\n";
  }
  const std::string dir = ScratchDir();
  const std::string path = WriteJsonl(text, dir);
  const std::string messages = WriteJsonl(kMessagesLine, dir, "m.jsonl");
  const auto load = [&](int threads) {
    TokenizeOptions options;
    options.num_threads = threads;
    auto loaded = Load({{path, TextFormat::kText, {}}, {messages, TextFormat::kMessages, {}}},
                       *tokenizer, options);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return *std::move(loaded);
  };
  const LoadedSamples one = load(1), three = load(3);
  ASSERT_EQ(one.samples.size(), 2301u);
  ASSERT_EQ(three.samples.size(), one.samples.size());
  for (size_t i = 0; i < one.samples.size(); ++i) {
    EXPECT_EQ(one.samples[i].input_ids, three.samples[i].input_ids) << i;
    EXPECT_EQ(one.samples[i].line, static_cast<int64_t>(i < 2300 ? i + 1 : 1)) << i;
  }
  EXPECT_EQ(one.samples[2299].input_ids,
            Widen(tokenizer->Encode("hello " + std::to_string(2299 * 7919) + " world<|endoftext|>",
                                    false)));
}

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

TEST(TextDatasetTest, ProgressIsReportedPerChunkOfALargeFile) {
  const auto tokenizer = MakeTokenizer();
  std::string text;
  for (int i = 0; i < 5000; ++i) text += "{\"text\": \"hello " + std::to_string(i) + "\"}\n";
  const std::string path = WriteJsonl(text);
  std::vector<SampleStats> reports;
  auto loaded = LoadTextDataset({{path, TextFormat::kText, {}}}, *tokenizer, nullptr, {},
                                [&](const SampleStats& so_far) { reports.push_back(so_far); });
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(reports.size(), 2u);  // after records 2048 and 4096; the last partial chunk is the end
  EXPECT_EQ(reports[0].records, 2048);
  EXPECT_EQ(reports[1].records, 4096);
  EXPECT_GT(reports[1].tokens, reports[0].tokens);
  EXPECT_LT(reports[1].tokens, loaded->stats.tokens);
}

}  // namespace
}  // namespace fulcrum::data
