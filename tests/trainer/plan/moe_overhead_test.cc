#include "trainer/plan/moe_overhead.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fulcrum::plan {
namespace {

models::ModelConfig TinyDeepSeek() {
  models::ModelConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 1;
  models::MoeConfig& moe = c.moe;
  moe.style = models::MoeStyle::kDeepSeek;
  moe.num_experts = 8;
  moe.experts_per_token = 2;
  moe.expert_intermediate_size = 8;
  moe.num_shared_experts = 1;
  moe.shared_intermediate_size = 8;
  moe.topk_method = "group_limited_greedy";  // the probe routes over one group
  moe.n_group = 4;
  moe.topk_group = 2;
  return c;
}

recipe::Recipe Recipe(const std::string& method) {
  recipe::Recipe r;
  r.finetune.method = method;
  r.finetune.lora.targets = {"all-linear"};
  r.batch.micro_batch = 2;
  r.batch.seq_len = 8;
  return r;
}

// At a FLOP rate no host reaches, the FLOPs take no time and every second
// measured is overhead; at 1 FLOP/s they take longer than any measurement.
TEST(MoeOverheadTest, MeasuresTheTimeBeyondTheFlops) {
  for (const char* method : {"full", "lora"}) {
    recipe::Recipe r = Recipe(method);
    const double per_row = *MeasureMoeRowSeconds(TinyDeepSeek(), r, 1e30);
    EXPECT_TRUE(std::isfinite(per_row)) << method;
    EXPECT_GT(per_row, 0) << method;
    EXPECT_LT(per_row, 1e-2) << method;  // 32 rows of width 16 in well under 0.3 s
    EXPECT_EQ(*MeasureMoeRowSeconds(TinyDeepSeek(), r, 1.0), 0) << method;
    // Under ep 2 the rank's 4 experts and top-1: it still runs.
    r.parallel.ep = 2;
    EXPECT_GT(*MeasureMoeRowSeconds(TinyDeepSeek(), r, 1e30), 0) << method;
  }
}

// An invalid LoRA spec is the recipe's error, named by its key.
TEST(MoeOverheadTest, AnInvalidLoraSpecIsAnError) {
  recipe::Recipe r = Recipe("lora");
  r.finetune.lora.rank = 0;
  const absl::StatusOr<double> per_row = MeasureMoeRowSeconds(TinyDeepSeek(), r, 1e30);
  ASSERT_FALSE(per_row.ok());
  EXPECT_NE(per_row.status().message().find("finetune.lora.rank: must be > 0, got 0"),
            std::string::npos)
      << per_row.status();
}

}  // namespace
}  // namespace fulcrum::plan
