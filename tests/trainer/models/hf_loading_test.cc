#include "trainer/models/hf_loading.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {
namespace {

std::string ModelDir(const std::string& family) {
  return testing::FixturesDir() + "/" + family + "/model";
}

CausalLM BuildModel(const std::string& family) {
  auto config = LoadModelConfig(ModelDir(family) + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return CausalLM(*config, torch::TensorOptions().dtype(torch::kFloat));
}

TEST(HfLoadingTest, StateDictNamesEqualCheckpointNames) {
  for (const std::string family : {"llama", "llama_tied", "qwen2"}) {
    CausalLM model = BuildModel(family);
    auto weights = checkpoint::HfWeights::Open(ModelDir(family));
    ASSERT_TRUE(weights.ok()) << weights.status();
    std::vector<std::string> names;
    for (const auto& t : HfStateDict(*model)) names.push_back(t.name);
    // The stable order is the registry's weight plan.
    std::vector<std::string> plan;
    for (const auto& entry : WeightPlan(model->config())) plan.push_back(entry.name);
    EXPECT_EQ(names, plan) << family;
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, weights->Names()) << family;
  }
}

TEST(HfLoadingTest, LoadCopiesValues) {
  CausalLM model = BuildModel("qwen2");
  auto weights = checkpoint::HfWeights::Open(ModelDir("qwen2"));
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_TRUE(LoadHfWeights(*model, *weights).ok());
  for (const auto& t : HfStateDict(*model)) {
    EXPECT_TRUE(torch::equal(t.tensor, *weights->View(t.name))) << t.name;
  }
}

TEST(HfLoadingTest, MismatchedCheckpointsAreNamedErrors) {
  // qwen2 weights (with q/k/v biases) into a llama model: unexpected tensors.
  CausalLM llama = BuildModel("llama");
  auto qwen2 = checkpoint::HfWeights::Open(ModelDir("qwen2"));
  ASSERT_TRUE(qwen2.ok());
  absl::Status status = LoadHfWeights(*llama, *qwen2);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "unexpected")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "q_proj.bias")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), ModelDir("qwen2"))) << status;
  // llama_tied weights into an untied llama: lm_head.weight is missing.
  auto tied = checkpoint::HfWeights::Open(ModelDir("llama_tied"));
  ASSERT_TRUE(tied.ok());
  status = LoadHfWeights(*llama, *tied);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "missing tensors: lm_head.weight")) << status;
  // A different vocab: shape mismatch naming the tensor and both shapes.
  ModelConfig config = llama->config();
  config.vocab_size = 500;
  CausalLM small(config, torch::TensorOptions().dtype(torch::kFloat));
  auto llama_weights = checkpoint::HfWeights::Open(ModelDir("llama"));
  ASSERT_TRUE(llama_weights.ok());
  status = LoadHfWeights(*small, *llama_weights);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "model.embed_tokens.weight [512,64] (model expects [500,64])"))
      << status;
}

TEST(HfLoadingTest, LoadConvertsToBf16) {
  auto config = LoadModelConfig(ModelDir("llama") + "/config.json");
  ASSERT_TRUE(config.ok());
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kBFloat16));
  auto weights = checkpoint::HfWeights::Open(ModelDir("llama"));
  ASSERT_TRUE(weights.ok());
  ASSERT_TRUE(LoadHfWeights(*model, *weights).ok());
  const torch::Tensor w = model->named_parameters()["model.norm.weight"];
  EXPECT_EQ(w.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(w, weights->View("model.norm.weight")->to(torch::kBFloat16)));
}

TEST(HfLoadingTest, WriteRandomModelRoundTripsBitEqual) {
  const std::string out = testing::ScratchDir() + "/random";
  const std::string config_path = ModelDir("llama") + "/config.json";
  ASSERT_TRUE(WriteRandomModel(config_path, out, 17).ok());
  EXPECT_EQ(testing::ReadFile(out + "/config.json"), testing::ReadFile(config_path));
  auto weights = checkpoint::HfWeights::Open(out);
  ASSERT_TRUE(weights.ok()) << weights.status();
  CausalLM loaded = BuildModel("llama");
  ASSERT_TRUE(LoadHfWeights(*loaded, *weights).ok());
  CausalLM reference = BuildModel("llama");
  InitializeWeights(*reference, 17);
  const auto ref_params = reference->named_parameters();
  for (const auto& item : loaded->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), ref_params[item.key()])) << item.key();
  }
  EXPECT_FALSE(WriteRandomModel("/nonexistent/config.json", out + "2", 1).ok());
  EXPECT_FALSE(std::filesystem::exists(out + "2/config.json"));
}

}  // namespace
}  // namespace fulcrum::models
