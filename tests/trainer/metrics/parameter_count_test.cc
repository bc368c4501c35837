// Parameter counts from the config against the models CausalLM builds: every
// fixture family (dense, tied, qkv bias, MoE with shared experts, latent
// attention), routed experts counted apart.
#include "trainer/metrics/parameter_count.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "tests/test_support.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::metrics {
namespace {

class ParameterCountTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ParameterCountTest, CountsWhatTheModelBuilds) {
  const std::string path = testing::FixturesDir() + "/" + GetParam() + "/model/config.json";
  absl::StatusOr<models::ModelConfig> config = models::LoadModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  models::CausalLM model(*config, torch::TensorOptions());
  int64_t experts = 0, other = 0;
  for (const auto& item : model->named_parameters()) {
    (models::IsRoutedExpertParameter(item.key()) ? experts : other) += item.value().numel();
  }
  const ParameterCounts counts = CountParameters(*config);
  EXPECT_EQ(counts.routed_experts, experts);
  EXPECT_EQ(counts.other, other);
  EXPECT_EQ(counts.total(), experts + other);
  EXPECT_EQ(experts > 0, config->moe.enabled());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParameterCountTest,
                         ::testing::Values("llama", "llama_tied", "qwen2", "mixtral",
                                           "deepseek_v2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace fulcrum::metrics
