// The text dataset's bad inputs (one test each, each naming file and line) and
// its policies for records that are bad or too long.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/data/dataset/text_dataset_fixtures.h"

namespace fulcrum::data::text_dataset_test {
namespace {

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

}  // namespace
}  // namespace fulcrum::data::text_dataset_test
