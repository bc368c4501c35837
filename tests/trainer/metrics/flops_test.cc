#include "trainer/metrics/flops.h"

#include <gtest/gtest.h>

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

TEST(FlopsTest, GemmPeakIsPositive) {
  EXPECT_GT(MeasureGemmFlops(torch::kCPU, torch::kFloat, 128, 1), 0.0);
  EXPECT_GT(MeasureGemmFlops(torch::kCPU, torch::kBFloat16, 64, 1), 0.0);
}

}  // namespace
}  // namespace fulcrum::metrics
