#include "trainer/metrics/flops.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "trainer/models/model_config.h"
#include "trainer/plan/step_time_model.h"

namespace fulcrum::metrics {
namespace {

TEST(FlopsTest, FullAndLoraAccounting) {
  FlopsModel full;
  full.trainable_matmul_params = 1000;
  full.num_layers = 2;
  full.num_heads = 4;
  full.head_dim = 8;
  // 6 N + 12 * T * heads * head_dim * layers
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(full, 16), 6000.0 + 12.0 * 16 * 4 * 8 * 2);
  FlopsModel lora = full;
  lora.trainable_matmul_params = 10;
  lora.frozen_matmul_params = 1000;
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(lora, 16), 4000.0 + 60.0 + 12.0 * 16 * 4 * 8 * 2);
}

// The trainer's FLOPs model (the planner's, from the config): a token runs
// through top-k of the routed experts, not all of them; the router is a
// matmul, the norms are not; LoRA keeps the base frozen.
TEST(FlopsTest, ModelFromConfigCountsTopKExperts) {
  const auto config = models::ParseModelConfig({{"architectures", {"MixtralForCausalLM"}},
                                                {"model_type", "mixtral"},
                                                {"vocab_size", 32},
                                                {"hidden_size", 16},
                                                {"intermediate_size", 8},
                                                {"num_hidden_layers", 1},
                                                {"num_attention_heads", 4},
                                                {"num_key_value_heads", 2},
                                                {"num_local_experts", 4},
                                                {"num_experts_per_tok", 2},
                                                {"max_position_embeddings", 64}},
                                               "flops_test");
  ASSERT_TRUE(config.ok()) << config.status();
  recipe::Recipe recipe;
  recipe.finetune.method = "full";
  const FlopsModel full = plan::FlopsModelFor(*config, recipe);
  // q 16x16 + k, v 16x8 + o 16x16, router 16x4, 2 of 4 experts x 3 x 16x8, lm_head 32x16.
  EXPECT_EQ(full.trainable_matmul_params, 768 + 64 + 2 * 3 * 16 * 8 + 512);
  EXPECT_EQ(full.frozen_matmul_params, 0);
  EXPECT_EQ(full.num_layers, 1);
  EXPECT_EQ(full.num_heads * full.head_dim, 16);
  recipe.finetune.method = "lora";
  const FlopsModel lora = plan::FlopsModelFor(*config, recipe);
  EXPECT_EQ(lora.frozen_matmul_params, full.trainable_matmul_params);
  EXPECT_GT(lora.trainable_matmul_params, 0);
  EXPECT_LT(lora.trainable_matmul_params, full.trainable_matmul_params);
}

TEST(FlopsTest, GemmPeakIsPositive) {
  EXPECT_GT(MeasureGemmFlops(torch::kCPU, torch::kFloat, 128, 1), 0.0);
  EXPECT_GT(MeasureGemmFlops(torch::kCPU, torch::kBFloat16, 64, 1), 0.0);
}

TEST(FlopsTest, SlowDtypeWarningNamesBothRates) {
  // A bf16 peak far below any CPU's fp32 rate: the warning, with both rates.
  const std::string slow = SlowDtypeWarning(torch::kCPU, torch::kBFloat16, 1e6);
  EXPECT_NE(slow.find("BFloat16 matrices at 0.001 GFLOP/s against fp32's"), std::string::npos)
      << slow;
  EXPECT_NE(slow.find("precision.dtype=fp32 trains faster"), std::string::npos) << slow;
  // As fast as fp32, or fp32 itself: nothing to say.
  EXPECT_EQ(SlowDtypeWarning(torch::kCPU, torch::kBFloat16, 1e18), "");
  EXPECT_EQ(SlowDtypeWarning(torch::kCPU, torch::kFloat, 1e6), "");
}

}  // namespace
}  // namespace fulcrum::metrics
