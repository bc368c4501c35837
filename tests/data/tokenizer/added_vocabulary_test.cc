// AddedVocabulary::Split against segmentations recorded from the reference
// (Rust `tokenizers` 0.23.2 Node binding: encode with a one-word WordLevel
// model, whose ids and offsets show where the added tokens matched).
#include "data/tokenizer/added_vocabulary.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fulcrum::data {
namespace {

// A compact form of a segment: "#ID" for an added token, "TEXT" or "^TEXT"
// (at_text_start) for text.
std::vector<std::string> Describe(const std::vector<TextSegment>& segments) {
  std::vector<std::string> out;
  for (const TextSegment& segment : segments) {
    if (segment.token_id >= 0) {
      EXPECT_TRUE(segment.text.empty());
      out.push_back("#" + std::to_string(segment.token_id));
    } else {
      out.push_back((segment.at_text_start ? "^" : "") + segment.text);
    }
  }
  return out;
}

nlohmann::json Token(int id, const std::string& content,
                     nlohmann::json flags = nlohmann::json::object()) {
  nlohmann::json token = {{"id", id},        {"content", content}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false},    {"normalized", false},
                          {"special", true}};
  for (auto& [key, value] : flags.items()) token[key] = value;
  return token;
}

AddedVocabulary MustParse(const nlohmann::json& json, const Normalizer* normalizer = nullptr) {
  auto parsed = AddedVocabulary::Parse(json, "added_tokens", normalizer);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? std::move(*parsed) : AddedVocabulary();
}

AddedVocabulary MustParseTokens(std::vector<nlohmann::json> tokens,
                                const Normalizer* normalizer = nullptr) {
  return MustParse(nlohmann::json(std::move(tokens)), normalizer);
}

TEST(AddedVocabularyTest, LeftmostLongest) {
  const AddedVocabulary vocab =
      MustParseTokens({Token(1, "<s>"), Token(2, "<s>x"), Token(3, "</s>")});
  EXPECT_EQ(Describe(vocab.Split("a<s>xb<s></s><s c", nullptr)),
            (std::vector<std::string>{"^a", "#2", "b", "#1", "#3", "<s c"}));
  ASSERT_EQ(vocab.tokens().size(), 3u);
  EXPECT_EQ(vocab.tokens()[1].content, "<s>x");
}

TEST(AddedVocabularyTest, LstripRstripAbsorbWhitespace) {
  const AddedVocabulary vocab =
      MustParseTokens({Token(1, "<m>", {{"lstrip", true}, {"rstrip", true}})});
  EXPECT_EQ(Describe(vocab.Split("a  <m>  b<m> c", nullptr)),
            (std::vector<std::string>{"^a", "#1", "b", "#1", "c"}));
}

TEST(AddedVocabularyTest, SingleWordOnlyAtWordBoundaries) {
  const AddedVocabulary vocab = MustParseTokens({Token(1, "ab", {{"single_word", true}})});
  EXPECT_EQ(Describe(vocab.Split("ab cab ab, abc _ab ab", nullptr)),
            (std::vector<std::string>{"#1", " cab ", "#1", ", abc _ab ", "#1"}));
}

class LowercaseForTest : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    for (char& c : *text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
};

TEST(AddedVocabularyTest, NormalizedTokensMatchNormalizedText) {
  const LowercaseForTest lowercase;
  // "AB" is normalized: its content is lowercased too, and it matches "ab"
  // and "AB" alike; "<x>" matches the raw text.
  const AddedVocabulary vocab = MustParse(
      {Token(1, "AB", {{"normalized", true}, {"special", false}}), Token(2, "<x>")}, &lowercase);
  EXPECT_EQ(Describe(vocab.Split("xAB<x>ab AB", &lowercase)),
            (std::vector<std::string>{"^x", "#1", "#2", "#1", " ", "#1"}));
}

class PrependForTest : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, "_");
  }
};

TEST(AddedVocabularyTest, TextBetweenTokensIsNormalizedPerSegment) {
  const PrependForTest prepend;
  const AddedVocabulary vocab = MustParseTokens({Token(1, "<s>")});
  EXPECT_EQ(Describe(vocab.Split("<s>hi you<s>", &prepend)),
            (std::vector<std::string>{"#1", "_hi you", "#1"}));
  EXPECT_EQ(Describe(vocab.Split("hi<s>", &prepend)), (std::vector<std::string>{"^_hi", "#1"}));
  EXPECT_TRUE(vocab.Split("", &prepend).empty());
}

TEST(AddedVocabularyTest, NoTokensGivesOneSegment) {
  const AddedVocabulary vocab = MustParse(nullptr);
  EXPECT_EQ(Describe(vocab.Split("hello", nullptr)), (std::vector<std::string>{"^hello"}));
  EXPECT_TRUE(vocab.tokens().empty());
}

TEST(AddedVocabularyTest, ManyTokensAndPlainText) {
  nlohmann::json tokens = nlohmann::json::array();
  for (int i = 0; i < 5000; ++i)
    tokens.push_back(Token(100 + i, "<unused" + std::to_string(i) + ">"));
  const AddedVocabulary vocab = MustParse(tokens);
  EXPECT_EQ(Describe(vocab.Split("a <unused42> b <unused4999><unused", nullptr)),
            (std::vector<std::string>{"^a ", "#142", " b ", "#5099", "<unused"}));
}

TEST(AddedVocabularyTest, RejectsBadEntries) {
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {nlohmann::json::array({Token(1, "a"), {{"content", "b"}}}), "added_tokens[1].id"},
      {nlohmann::json::array({Token(-1, "a")}), "added_tokens[0].id"},
      {nlohmann::json::array({{{"id", 1}, {"content", 5}}}), "added_tokens[0].content"},
      {nlohmann::json::array({Token(1, "a", {{"lstrip", "yes"}})}), "added_tokens[0].lstrip"},
      {nlohmann::json::object(), "added_tokens: expected an array"},
  };
  for (const auto& [json, needle] : bad) {
    SCOPED_TRACE(json.dump());
    auto parsed = AddedVocabulary::Parse(json, "added_tokens");
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(std::string(parsed.status().message()).find(needle), std::string::npos)
        << parsed.status();
  }
}

}  // namespace
}  // namespace fulcrum::data
