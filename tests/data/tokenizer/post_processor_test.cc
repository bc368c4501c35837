#include "data/tokenizer/post_processor.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace fulcrum::data {
namespace {

absl::StatusOr<std::unique_ptr<PostProcessor>> Parse(const std::string& json_text) {
  return ParsePostProcessor(nlohmann::json::parse(json_text), "tokenizer.json: post_processor");
}

std::vector<int32_t> Apply(const std::string& json_text, std::vector<int32_t> ids) {
  auto processor = Parse(json_text);
  EXPECT_TRUE(processor.ok()) << processor.status();
  if (processor.ok() && *processor != nullptr) (*processor)->AddSpecialTokens(&ids);
  return ids;
}

constexpr char kBosTemplate[] = R"({"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})";

TEST(PostProcessorTest, TemplateAddsBos) {
  EXPECT_EQ(Apply(kBosTemplate, {5, 6}), (std::vector<int32_t>{1, 5, 6}));
  EXPECT_EQ(Apply(kBosTemplate, {}), (std::vector<int32_t>{1}));
}

TEST(PostProcessorTest, TemplateWithBosAndEos) {
  const std::string both = R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                         "</s>": {"id": "</s>", "ids": [2, 3], "tokens": ["</s>", "x"]}}})";
  EXPECT_EQ(Apply(both, {7}), (std::vector<int32_t>{1, 7, 2, 3}));
}

TEST(PostProcessorTest, ByteLevelAndSequence) {
  EXPECT_EQ(Apply(R"({"type": "ByteLevel", "trim_offsets": false})", {4}),
            (std::vector<int32_t>{4}));
  const std::string sequence =
      std::string(R"({"type": "Sequence", "processors": [{"type": "ByteLevel"}, )") + kBosTemplate +
      "]}";
  EXPECT_EQ(Apply(sequence, {4}), (std::vector<int32_t>{1, 4}));
}

TEST(PostProcessorTest, RobertaAddsClsAndSep) {
  EXPECT_EQ(Apply(R"({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]})", {9}),
            (std::vector<int32_t>{0, 9, 2}));
}

TEST(PostProcessorTest, NullIsNone) {
  auto none = ParsePostProcessor(nlohmann::json(), "tokenizer.json: post_processor");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
}

TEST(PostProcessorTest, BadProcessorsNameTheKey) {
  EXPECT_EQ(Parse(R"({"type": "Mystery"})").status().message(),
            "tokenizer.json: post_processor.type: not supported yet: post_processor type Mystery");
  EXPECT_NE(Parse(R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}],
                      "special_tokens": {}})")
                .status()
                .message()
                .find("missing special token \"<s>\""),
            std::string::npos);
  EXPECT_EQ(Parse(R"({"type": "TemplateProcessing", "special_tokens": {}})").status().message(),
            "tokenizer.json: post_processor.single: missing");
  EXPECT_NE(
      Parse(
          R"({"type": "Sequence", "processors": [{"type": "BertProcessing", "sep": ["x", -2], "cls": ["y", 0]}]})")
          .status()
          .message()
          .find("post_processor.processors[0].sep[1]"),
      std::string::npos);
}

}  // namespace
}  // namespace fulcrum::data
