// The training-state estimate per rank (weights, gradients, AdamW state;
// experts split by ep, layers by pp, optimizer state by ZeRO-1) and the
// message of a layout that cannot fit.
#include "trainer/loop/memory_check.h"

#include <gtest/gtest.h>

#include <string>

namespace fulcrum::loop {
namespace {

metrics::ParameterCounts Counts() {
  metrics::ParameterCounts c;
  c.other = 1000;
  c.routed_experts = 8000;
  return c;
}

recipe::Recipe Full() {
  recipe::Recipe r;
  r.source = "r.yaml";
  r.finetune.method = "full";
  return r;
}

TEST(MemoryCheckTest, FullFineTuneCountsWeightsGradientsAndAdam) {
  recipe::Recipe r = Full();
  TrainingStateEstimate e = EstimateTrainingState(Counts(), r);
  EXPECT_DOUBLE_EQ(e.params_per_rank, 9000);
  EXPECT_DOUBLE_EQ(e.bytes_per_rank, 9000 * (4 + 4 + 8));
  r.parallel.dp = 4;
  r.parallel.ep = 4;  // experts / 4
  e = EstimateTrainingState(Counts(), r);
  EXPECT_DOUBLE_EQ(e.expert_params_per_rank, 2000);
  EXPECT_DOUBLE_EQ(e.bytes_per_rank, 3000 * 16);
  r.parallel.zero = 1;  // dense state / dp 4, experts' / (dp / ep) = 1
  e = EstimateTrainingState(Counts(), r);
  EXPECT_DOUBLE_EQ(e.bytes_per_rank, 3000 * 8 + 1000 * 8 / 4.0 + 2000 * 8);
  r.parallel.ep = 2;  // experts' state over 2 ranks
  r.parallel.pp = 2;  // every layer count halves
  e = EstimateTrainingState(Counts(), r);
  EXPECT_DOUBLE_EQ(e.params_per_rank, 500 + 2000);
  EXPECT_DOUBLE_EQ(e.bytes_per_rank, 2500 * 8 + 500 * 8 / 4.0 + 2000 * 8 / 2.0);
  r.parallel.tp = 2;  // and every count halves again
  e = EstimateTrainingState(Counts(), r);
  EXPECT_DOUBLE_EQ(e.params_per_rank, 250 + 1000);
  EXPECT_DOUBLE_EQ(e.bytes_per_rank, 1250 * 8 + 250 * 8 / 4.0 + 1000 * 8 / 2.0);
  r.parallel = recipe::ParallelSection();
  r.precision.dtype = "bf16";  // 2-byte weights and gradients, fp32 master
  EXPECT_DOUBLE_EQ(EstimateTrainingState(Counts(), r).bytes_per_rank, 9000 * (2 + 2 + 12));
}

TEST(MemoryCheckTest, LoraHoldsTheFrozenBaseOnly) {
  recipe::Recipe r = Full();
  r.finetune.method = "lora";
  r.parallel.dp = 2;
  r.parallel.ep = 2;
  EXPECT_DOUBLE_EQ(EstimateTrainingState(Counts(), r).bytes_per_rank, (1000 + 4000) * 4);
}

TEST(MemoryCheckTest, ALayoutThatCannotFitNamesTheKeysAndTheNumbers) {
  recipe::Recipe r = Full();
  r.parallel.dp = 2;
  r.parallel.ep = 2;
  const TrainingStateEstimate e = EstimateTrainingState(Counts(), r);
  EXPECT_TRUE(CheckTrainingStateFits(e, Counts(), r, e.bytes_per_rank).ok());
  EXPECT_TRUE(CheckTrainingStateFits(e, Counts(), r, 0).ok());  // unknown: no check
  const absl::Status status = CheckTrainingStateFits(e, Counts(), r, e.bytes_per_rank / 2);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  const std::string message(status.message());
  EXPECT_NE(message.find("r.yaml: parallel: this layout needs about"), std::string::npos)
      << message;
  EXPECT_NE(message.find("4e+03 of 8e+03 routed-expert parameters per rank at ep=2"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("raise parallel.ep, parallel.tp, parallel.pp, set parallel.zero: 1"),
            std::string::npos)
      << message;
}

TEST(MemoryCheckTest, HostMemoryIsRead) { EXPECT_GT(AvailableHostMemory(), 0.0); }

}  // namespace
}  // namespace fulcrum::loop
