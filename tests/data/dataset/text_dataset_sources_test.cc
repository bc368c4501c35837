// The text dataset's mixtures of sources, its threads and its progress reports.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/data/dataset/text_dataset_fixtures.h"

namespace fulcrum::data::text_dataset_test {
namespace {

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
}  // namespace fulcrum::data::text_dataset_test
