// Normalizers against outputs recorded from the reference (Rust `tokenizers`
// 0.23.2 Node binding, Normalizer.normalizeString).
#include "data/tokenizer/normalizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fulcrum::data {
namespace {

struct Case {
  const char* name;
  const char* config;  // the "normalizer" JSON
  const char* text;
  const char* expected;
};

TEST(NormalizerTest, MatchesReference) {
  const std::vector<Case> cases = {
      {"nfc", "{\"type\": \"NFC\"}", "e\314\201 \342\204\253 x", "\303\251 \303\205 x"},
      {"nfd", "{\"type\": \"NFD\"}", "\303\251x", "e\314\201x"},
      {"nfkc", "{\"type\": \"NFKC\"}", "\357\254\201\342\221\240 \357\274\241", "fi1 A"},
      {"nfkd", "{\"type\": \"NFKD\"}", "\357\254\201\303\251", "fie\314\201"},
      {"lowercase", "{\"type\": \"Lowercase\"}",
       "\303\200BC \316\243\316\237\316\243 \304\260 \341\272\236",
       "\303\240bc \317\203\316\277\317\203 i\314\207 \303\237"},
      {"strip", "{\"type\": \"Strip\", \"strip_left\": true, \"strip_right\": true}",
       " \343\200\200 a b \011", "a b"},
      {"strip_left", "{\"type\": \"Strip\", \"strip_left\": true, \"strip_right\": false}",
       "  a b  ", "a b  "},
      {"prepend", "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}", "ab", "\342\226\201ab"},
      {"replace_string",
       "{\"type\": \"Replace\", \"pattern\": {\"String\": \"aa\"}, \"content\": \"b\"}", "aaaaa c",
       "bba c"},
      {"replace_regex",
       "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \"_\"}", "a  b c   ",
       "a_b_c_"},
      {"llama2",
       "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
       "\"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": "
       "\"\\u2581\"}]}",
       "Hi  there", "\342\226\201Hi\342\226\201\342\226\201there"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto parsed = ParseNormalizer(nlohmann::json::parse(c.config), "normalizer");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_NE(*parsed, nullptr);
    std::string text = c.text;
    (*parsed)->Normalize(&text);
    EXPECT_EQ(text, c.expected);
  }
}

std::string Apply(const std::string& config, std::string text) {
  auto parsed = ParseNormalizer(nlohmann::json::parse(config), "normalizer");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return "<error>";
  (*parsed)->Normalize(&text);
  return text;
}

TEST(NormalizerTest, PrependSkipsEmptyText) {
  EXPECT_EQ(Apply(R"({"type":"Prepend","prepend":"_"})", ""), "");
  EXPECT_EQ(Apply(R"({"type":"Prepend","prepend":"_"})", "x"), "_x");
}

TEST(NormalizerTest, AsciiAndAlreadyNormalizedTextIsUnchanged) {
  EXPECT_EQ(Apply(R"({"type":"NFKC"})", "plain ascii"), "plain ascii");
  EXPECT_EQ(Apply(R"({"type":"NFC"})", "\u00e9t\u00e9"), "\u00e9t\u00e9");
  EXPECT_EQ(Apply(R"({"type":"NFD"})", "\u00e9"), "e\u0301");
}

TEST(NormalizerTest, EmptySequenceIsIdentity) {
  EXPECT_EQ(Apply(R"({"type":"Sequence","normalizers":[]})", "A b"), "A b");
  EXPECT_EQ(Apply(R"({"type":"Replace","pattern":{"String":""},"content":"x"})", "ab"), "ab");
}

TEST(NormalizerTest, NullGivesNoNormalizer) {
  auto parsed = ParseNormalizer(nlohmann::json(), "normalizer");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, nullptr);
}

TEST(NormalizerTest, RejectsBadConfigs) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"type":"BertNormalizer"})", "not supported yet: normalizer type BertNormalizer"},
      {R"({"type":"Replace","pattern":{"Regex":"[a"},"content":"x"})",
       "normalizer.normalizers[1].pattern.Regex"},
      {R"({"type":"Replace","pattern":{"String":"a"}})", "content"},
      {R"({"type":"Prepend"})", "prepend"},
      {R"({"type":"Strip","strip_left":1})", "strip_left"},
      {R"({"normalizers":[]})", "type"},
  };
  for (const auto& [config, needle] : bad) {
    SCOPED_TRACE(config);
    nlohmann::json json = nlohmann::json::parse(config);
    if (needle.find("normalizers[1]") != std::string::npos) {
      json = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, json}}};
    }
    auto parsed = ParseNormalizer(json, "normalizer");
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(std::string(parsed.status().message()).find(needle), std::string::npos)
        << parsed.status();
  }
}

}  // namespace
}  // namespace fulcrum::data
