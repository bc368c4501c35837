#include "trainer/models/model_config.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "tests/test_support.h"

namespace fulcrum::models {
namespace {

nlohmann::json TinyLlama() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu"})");
}

TEST(ModelConfigTest, LoadsLlamaFixture) {
  auto config = LoadModelConfig(testing::FixturesDir() + "/llama/model/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->num_heads, 4);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_DOUBLE_EQ(config->rope_theta, 5e5);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_TRUE(config->rope_scaling.type.empty());
  EXPECT_EQ(config->raw.at("vocab_size"), 512);
}

TEST(ModelConfigTest, Qwen2HasQkvBiasAndTiedFixtureIsTied) {
  auto qwen2 = LoadModelConfig(testing::FixturesDir() + "/qwen2/model/config.json");
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_TRUE(qwen2->attention_bias);
  EXPECT_FALSE(qwen2->o_proj_bias);
  EXPECT_FALSE(qwen2->qk_norm);
  auto tied = LoadModelConfig(testing::FixturesDir() + "/llama_tied/model/config.json");
  ASSERT_TRUE(tied.ok()) << tied.status();
  EXPECT_TRUE(tied->tie_word_embeddings);
}

TEST(ModelConfigTest, Qwen3HasQkNormAndExplicitHeadDim) {
  nlohmann::json json = TinyLlama();
  json["architectures"] = {"Qwen3ForCausalLM"};
  json["model_type"] = "qwen3";
  json["head_dim"] = 32;  // heads * head_dim != hidden is allowed
  auto config = ParseModelConfig(json, "q3.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->qk_norm);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->head_dim, 32);
}

TEST(ModelConfigTest, UnsupportedArchitectureListsSupported) {
  nlohmann::json json = TinyLlama();
  json["architectures"] = {"GPT2LMHeadModel"};
  auto config = ParseModelConfig(json, "cfg.json");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  EXPECT_TRUE(absl::StrContains(message, "cfg.json")) << message;
  EXPECT_TRUE(absl::StrContains(message, "GPT2LMHeadModel")) << message;
  for (const std::string& arch : SupportedArchitectures()) {
    EXPECT_TRUE(absl::StrContains(message, arch)) << message;
  }
  EXPECT_EQ(SupportedArchitectures().size(), 9u);
}

TEST(ModelConfigTest, MissingKeyIsNamed) {
  nlohmann::json json = TinyLlama();
  json.erase("intermediate_size");
  auto config = ParseModelConfig(json, "cfg.json");
  ASSERT_FALSE(config.ok());
  EXPECT_TRUE(absl::StrContains(config.status().message(), "cfg.json")) << config.status();
  EXPECT_TRUE(absl::StrContains(config.status().message(), "intermediate_size")) << config.status();
}

TEST(ModelConfigTest, WrongTypeAndBadHeadsAreRejected) {
  nlohmann::json json = TinyLlama();
  json["hidden_size"] = "64";
  EXPECT_TRUE(absl::StrContains(ParseModelConfig(json, "c").status().message(), "hidden_size"));
  json = TinyLlama();
  json["num_key_value_heads"] = 3;
  auto config = ParseModelConfig(json, "c");
  ASSERT_FALSE(config.ok());
  EXPECT_TRUE(absl::StrContains(config.status().message(), "num_key_value_heads"))
      << config.status();
  json = TinyLlama();
  json["hidden_act"] = "gelu";
  EXPECT_TRUE(absl::StrContains(ParseModelConfig(json, "c").status().message(), "hidden_act"));
}

TEST(ModelConfigTest, RopeScalingTypes) {
  nlohmann::json json = TinyLlama();
  json["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
  auto dynamic = ParseModelConfig(json, "c.json");
  ASSERT_FALSE(dynamic.ok());
  EXPECT_TRUE(absl::StrContains(dynamic.status().message(), "not supported yet"))
      << dynamic.status();
  EXPECT_TRUE(absl::StrContains(dynamic.status().message(), "rope_scaling")) << dynamic.status();
  json["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  auto yarn = ParseModelConfig(json, "c.json");
  ASSERT_TRUE(yarn.ok()) << yarn.status();
  EXPECT_EQ(yarn->rope_scaling.type, "yarn");
  EXPECT_TRUE(CheckSequenceLength(*yarn, 1024).ok());  // 4 x 256
  EXPECT_FALSE(CheckSequenceLength(*yarn, 1025).ok());

  json["rope_scaling"] = {{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 64}};
  auto llama3 = ParseModelConfig(json, "c.json");
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  EXPECT_EQ(llama3->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(llama3->rope_scaling.factor, 8.0);
  EXPECT_EQ(llama3->rope_scaling.original_max_position_embeddings, 64);

  json["rope_scaling"].erase("original_max_position_embeddings");
  auto missing = ParseModelConfig(json, "c.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "original_max_position_embeddings"));

  json["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto linear = ParseModelConfig(json, "c.json");
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ(linear->rope_scaling.type, "linear");
}

TEST(ModelConfigTest, CheckSequenceLength) {
  auto config = ParseModelConfig(TinyLlama(), "c.json");
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(CheckSequenceLength(*config, 256).ok());
  absl::Status too_long = CheckSequenceLength(*config, 257);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(too_long.message(), "257")) << too_long;
  EXPECT_TRUE(absl::StrContains(too_long.message(), "256")) << too_long;
  config->rope_scaling.type = "linear";
  config->rope_scaling.factor = 2.0;
  EXPECT_TRUE(CheckSequenceLength(*config, 512).ok());
  EXPECT_FALSE(CheckSequenceLength(*config, 513).ok());
}

TEST(ModelConfigTest, MistralSlidingWindowLimitsSequenceLength) {
  nlohmann::json json = TinyLlama();
  json["architectures"] = {"MistralForCausalLM"};
  json["model_type"] = "mistral";
  json["sliding_window"] = 128;
  auto config = ParseModelConfig(json, "m.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sliding_window, 128);
  EXPECT_TRUE(CheckSequenceLength(*config, 128).ok());
  absl::Status status = CheckSequenceLength(*config, 129);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "sliding_window")) << status;
  // Qwen2 ignores sliding_window unless use_sliding_window is true.
  json["architectures"] = {"Qwen2ForCausalLM"};
  json["model_type"] = "qwen2";
  auto qwen2 = ParseModelConfig(json, "q.json");
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_EQ(qwen2->sliding_window, 0);
}

TEST(ModelConfigTest, LoadModelConfigBadFiles) {
  auto missing = LoadModelConfig("/nonexistent/config.json");
  EXPECT_FALSE(missing.ok());
  const std::string path = testing::ScratchDir() + "/config.json";
  testing::WriteFile(path, "{ not json");
  auto bad = LoadModelConfig(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), path)) << bad.status();
}

TEST(FamilyRegistryTest, WeightPlanMatchesFixtureNamesAndSplits) {
  auto config = LoadModelConfig(testing::FixturesDir() + "/qwen2/model/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const std::vector<WeightPlanEntry> plan = WeightPlan(*config);
  // 1 embed + 2 layers x (3 w + 3 b + o + 3 mlp + 2 norms) + norm + lm_head.
  EXPECT_EQ(plan.size(), 1u + 2u * 12u + 2u);
  EXPECT_EQ(plan.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(plan.front().split, TpSplit::kVocab);
  EXPECT_EQ(plan[1].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(plan[1].split, TpSplit::kColumn);
  EXPECT_EQ(plan[2].name, "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(plan[7].name, "model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(plan[7].split, TpSplit::kRow);
  EXPECT_EQ(plan.back().name, "lm_head.weight");
  EXPECT_STREQ(TpSplitName(TpSplit::kRow), "row");
  EXPECT_EQ(FindFamilyByModelType("qwen3")->qk_norm, true);
  EXPECT_EQ(FindFamilyByArchitecture("MixtralForCausalLM")->model_type, "mixtral");
  EXPECT_EQ(FindFamilyByArchitecture("GPT2LMHeadModel"), nullptr);
}

}  // namespace
}  // namespace fulcrum::models
