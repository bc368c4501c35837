#include "data/tokenizer/bpe_model.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace fulcrum::data {
namespace {

std::unique_ptr<BpeModel> MakeModel(const std::string& json_text) {
  auto model = BpeModel::Parse(nlohmann::json::parse(json_text), "tokenizer.json: model");
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<int32_t> Tokenize(const BpeModel& model, const std::string& piece) {
  std::vector<int32_t> ids;
  model.Tokenize(piece, &ids);
  return ids;
}

absl::Status ParseError(const std::string& json_text) {
  return BpeModel::Parse(nlohmann::json::parse(json_text), "tokenizer.json: model").status();
}

constexpr char kAbc[] =
    R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
                            "merges": MERGES})";

std::string AbcWith(const std::string& merges) {
  std::string text = kAbc;
  text.replace(text.find("MERGES"), 6, merges);
  return text;
}

TEST(BpeModelTest, AppliesLowestRankMergeFirst) {
  auto ab_first = MakeModel(AbcWith(R"(["a b", "ab c"])"));
  EXPECT_EQ(Tokenize(*ab_first, "abc"), (std::vector<int32_t>{5}));
  // "b c" outranks "a b": the word becomes a + bc, and no merge joins those.
  auto bc_first = MakeModel(AbcWith(R"(["b c", "a b", "ab c"])"));
  EXPECT_EQ(Tokenize(*bc_first, "abc"), (std::vector<int32_t>{0, 4}));
  EXPECT_EQ(Tokenize(*bc_first, "cab"), (std::vector<int32_t>{2, 3}));
}

TEST(BpeModelTest, PairMergesEqualStringMerges) {
  auto pairs = MakeModel(AbcWith(R"([["b", "c"], ["a", "b"]])"));
  EXPECT_EQ(Tokenize(*pairs, "abcab"), (std::vector<int32_t>{0, 4, 3}));
}

TEST(BpeModelTest, TiesGoToTheLeftmostPair) {
  auto model = MakeModel(R"({"type": "BPE", "vocab": {"a": 0, "aa": 1}, "merges": ["a a"]})");
  EXPECT_EQ(Tokenize(*model, "aaa"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(Tokenize(*model, "aaaaa"), (std::vector<int32_t>{1, 1, 0}));
}

TEST(BpeModelTest, IgnoreMergesEmitsWholeVocabWords) {
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "c": 2, "abc": 3}, "merges": [])";
  auto plain = MakeModel(R"({"type": "BPE", )" + vocab + "}");
  auto ignoring = MakeModel(R"({"type": "BPE", "ignore_merges": true, )" + vocab + "}");
  EXPECT_EQ(Tokenize(*plain, "abc"), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(Tokenize(*ignoring, "abc"), (std::vector<int32_t>{3}));
  EXPECT_EQ(Tokenize(*ignoring, "cab"), (std::vector<int32_t>{2, 0, 1}));
}

TEST(BpeModelTest, ByteFallbackThenUnknown) {
  // "é" is C3 A9; only <0xC3> and <0xA9> exist, "ü" (C3 BC) lacks <0xBC>.
  auto model = MakeModel(R"({"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
      "vocab": {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "a": 3}, "merges": []})");
  EXPECT_EQ(Tokenize(*model, "aé"), (std::vector<int32_t>{3, 1, 2}));
  EXPECT_EQ(Tokenize(*model, "üa"), (std::vector<int32_t>{0, 3}));
}

TEST(BpeModelTest, UnknownCharsFuseOnlyWhenAsked) {
  const std::string rest = R"("unk_token": "<unk>", "vocab": {"<unk>": 0, "a": 1}, "merges": []})";
  auto fused = MakeModel(R"({"type": "BPE", "fuse_unk": true, )" + rest);
  auto separate = MakeModel(R"({"type": "BPE", "fuse_unk": false, )" + rest);
  EXPECT_EQ(Tokenize(*fused, "xya"), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(Tokenize(*separate, "xya"), (std::vector<int32_t>{0, 0, 1}));
  // Without an unknown token the char is dropped.
  auto no_unk = MakeModel(R"({"type": "BPE", "vocab": {"a": 1}, "merges": []})");
  EXPECT_EQ(Tokenize(*no_unk, "xa"), (std::vector<int32_t>{1}));
}

TEST(BpeModelTest, SubwordPrefixAndWordSuffix) {
  auto prefixed = MakeModel(R"({"type": "BPE", "continuing_subword_prefix": "##",
      "vocab": {"a": 0, "##b": 1, "ab": 2}, "merges": ["a ##b"]})");
  EXPECT_EQ(Tokenize(*prefixed, "ab"), (std::vector<int32_t>{2}));
  auto suffixed = MakeModel(R"({"type": "BPE", "end_of_word_suffix": "</w>",
      "vocab": {"a": 0, "b</w>": 1, "ab</w>": 2, "b": 3}, "merges": ["a b</w>"]})");
  EXPECT_EQ(Tokenize(*suffixed, "ab"), (std::vector<int32_t>{2}));
  EXPECT_EQ(Tokenize(*suffixed, "ba"), (std::vector<int32_t>{3}));  // "a</w>" unknown: dropped
  // Empty strings (Qwen) change nothing.
  auto empty =
      MakeModel(R"({"type": "BPE", "continuing_subword_prefix": "", "end_of_word_suffix": "",
      "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})");
  EXPECT_EQ(Tokenize(*empty, "abab"), (std::vector<int32_t>{2, 2}));
}

TEST(BpeModelTest, MultiByteCharsAndEmptyPiece) {
  auto model =
      MakeModel(R"({"type": "BPE", "vocab": {"日": 0, "本": 1, "日本": 2}, "merges": ["日 本"]})");
  EXPECT_EQ(Tokenize(*model, "日本日"), (std::vector<int32_t>{2, 0}));
  EXPECT_TRUE(Tokenize(*model, "").empty());
  EXPECT_EQ(model->vocab_size(), 3);
  EXPECT_EQ(model->TokenToId("日本"), 2);
  ASSERT_NE(model->IdToToken(1), nullptr);
  EXPECT_EQ(*model->IdToToken(1), "本");
  EXPECT_EQ(model->IdToToken(7), nullptr);
}

TEST(BpeModelTest, CacheIsConsistentAcrossThreads) {
  auto model = MakeModel(AbcWith(R"(["a b", "ab c"])"));
  const std::vector<std::string> words = {"abc", "abcabc", "cab", "bca", "aabbcc"};
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& word : words) expected.push_back(Tokenize(*model, word));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 2000; ++round) {
        const size_t k = (round + t) % words.size();
        if (Tokenize(*model, words[k]) != expected[k]) ++mismatches[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
  EXPECT_EQ(expected[1], (std::vector<int32_t>{5, 5}));
}

TEST(BpeModelTest, LongWordsBypassTheCache) {
  auto model = MakeModel(R"({"type": "BPE", "vocab": {"a": 0, "aa": 1}, "merges": ["a a"]})");
  const std::vector<int32_t> ids = Tokenize(*model, std::string(1001, 'a'));
  ASSERT_EQ(ids.size(), 501u);
  EXPECT_EQ(ids.back(), 0);
}

TEST(BpeModelTest, BadModelsNameTheKey) {
  EXPECT_EQ(ParseError(R"({"type": "BPE", "merges": []})").message(),
            "tokenizer.json: model.vocab: missing");
  EXPECT_NE(
      ParseError(R"({"vocab": {"a": 0}, "merges": ["a b"]})").message().find("model.merges[0]"),
      std::string::npos);
  EXPECT_NE(
      ParseError(R"({"vocab": {"a": 0}, "merges": ["a a"]})").message().find("\"aa\" is not in"),
      std::string::npos);
  EXPECT_NE(ParseError(R"({"vocab": {"a": 0}, "merges": ["aa"]})").message().find("has no space"),
            std::string::npos);
  EXPECT_NE(
      ParseError(R"({"vocab": {"a": -1}, "merges": []})").message().find("model.vocab[\"a\"]"),
      std::string::npos);
  EXPECT_NE(ParseError(R"({"vocab": [], "merges": []})").message().find("model.vocab"),
            std::string::npos);
  EXPECT_NE(ParseError(R"({"vocab": {}, "merges": [], "dropout": 0.1})")
                .message()
                .find("not supported yet"),
            std::string::npos);
  EXPECT_TRUE(ParseError(R"({"vocab": {}, "merges": [], "dropout": null})").ok());
  EXPECT_NE(ParseError(R"({"vocab": {}, "merges": [], "byte_fallback": 1})")
                .message()
                .find("byte_fallback"),
            std::string::npos);
}

}  // namespace
}  // namespace fulcrum::data
