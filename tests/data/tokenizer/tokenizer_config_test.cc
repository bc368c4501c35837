#include "data/tokenizer/tokenizer_config.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

TEST(TokenizerConfigTest, ReadsStringsObjectsAndNulls) {
  auto config = ParseTokenizerConfig(R"({
      "add_bos_token": true, "add_eos_token": false,
      "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": false},
      "eos_token": "<|im_end|>", "pad_token": null, "chat_template": "{{ messages }}",
      "model_max_length": 131072})",
                                     "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->present);
  EXPECT_TRUE(config->add_bos_token);
  EXPECT_FALSE(config->add_eos_token);
  EXPECT_EQ(config->bos_token, "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(config->eos_token, "<|im_end|>");
  EXPECT_EQ(config->pad_token, std::nullopt);
  EXPECT_EQ(config->chat_template, "{{ messages }}");
}

TEST(TokenizerConfigTest, DefaultsWhenAbsent) {
  auto config = ParseTokenizerConfig("{}", "tokenizer_config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(config->add_bos_token);
  EXPECT_EQ(config->bos_token, std::nullopt);
  EXPECT_TRUE(config->chat_template.empty());
  EXPECT_FALSE(TokenizerConfig{}.present);
}

TEST(TokenizerConfigTest, TemplateListPicksDefault) {
  auto config = ParseTokenizerConfig(
      R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})",
      "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->chat_template, "D");
}

TEST(TokenizerConfigTest, BadFilesNameTheKey) {
  const auto error = [](const std::string& text) {
    return std::string(ParseTokenizerConfig(text, "tokenizer_config.json").status().message());
  };
  EXPECT_EQ(error(R"({"add_bos_token": "yes"})"),
            "tokenizer_config.json: add_bos_token: expected a bool, got string");
  EXPECT_NE(error(R"({"eos_token": 3})").find("tokenizer_config.json: eos_token"),
            std::string::npos);
  EXPECT_NE(error(R"({"bos_token": {"lstrip": true}})").find("bos_token.content: missing"),
            std::string::npos);
  EXPECT_NE(error("[1,").find("invalid JSON at byte"), std::string::npos);
  EXPECT_NE(error("[]").find("expected a JSON object"), std::string::npos);
  EXPECT_FALSE(LoadTokenizerConfig(testing::ScratchDir() + "/missing.json").ok());
}

}  // namespace
}  // namespace fulcrum::data
