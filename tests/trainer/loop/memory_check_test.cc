// The train-start memory check: the planner's model against the memory a
// rank may use, and the message of a layout that cannot fit.
#include "trainer/loop/memory_check.h"

#include <gtest/gtest.h>

#include <string>

#include "trainer/plan/memory_model.h"

namespace fulcrum::loop {
namespace {

models::ModelConfig Moe() {
  models::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.moe.style = models::MoeStyle::kMixtral;
  c.moe.num_experts = 8;
  c.moe.experts_per_token = 2;
  c.moe.expert_intermediate_size = 32;
  return c;
}

// Full fine-tuning of Moe() at dp 2 x ep 2.
recipe::Recipe Full() {
  return *recipe::ParseRecipe(R"(model: {config: config.json}
data: {path: data.jsonl}
finetune: {method: full}
batch: {global_batch: 4, micro_batch: 2, seq_len: 8}
parallel: {dp: 2, ep: 2}
)",
                              "r.yaml");
}

TEST(MemoryCheckTest, ALayoutThatCannotFitNamesTheKeysAndTheNumbers) {
  const models::ModelConfig config = Moe();
  const recipe::Recipe r = Full();
  const double need = plan::PlanMemory(config, r, plan::MemoryOptionsFor("cpu"))->peak_bytes();
  const torch::Device cpu(torch::kCPU);
  EXPECT_TRUE(CheckLayoutFits(config, r, cpu, AvailableMemory{need, "test"}).ok());
  EXPECT_TRUE(CheckLayoutFits(config, r, cpu, AvailableMemory{0, "unknown"}).ok());  // no check
  const absl::Status status = CheckLayoutFits(config, r, cpu, AvailableMemory{need / 2, "half"});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  const std::string message(status.message());
  for (const std::string fragment :
       {"r.yaml: parallel: this layout needs about", "parallel.dp=2", "parallel.ep=2",
        "parallel.zero=0", "batch.micro_batch=2", "routed-expert parameters per rank at ep=2",
        "available to each rank (half)",
        "raise parallel.ep, parallel.tp, parallel.pp, set "
        "parallel.zero: 1"}) {
    EXPECT_NE(message.find(fragment), std::string::npos) << fragment << "\n" << message;
  }
  EXPECT_NE(message.find(plan::FormatBytes(need)), std::string::npos) << message;
}

TEST(MemoryCheckTest, HostMemoryIsRead) {
  EXPECT_GT(AvailableHostMemory(), 0.0);
  recipe::TrainSection train;
  const AvailableMemory host = AvailableMemoryPerRank(train, torch::kCPU, 2);
  EXPECT_NEAR(host.bytes, AvailableHostMemory() / 2, AvailableHostMemory() * 0.05);
  EXPECT_EQ(host.from, "host MemAvailable / 2 local rank(s)");
  train.memory_gib = 1.5;  // the recipe's number wins
  const AvailableMemory set = AvailableMemoryPerRank(train, torch::kCPU, 2);
  EXPECT_DOUBLE_EQ(set.bytes, 1.5 * 1024 * 1024 * 1024);
  EXPECT_EQ(set.from, "train.memory_gib");
}

}  // namespace
}  // namespace fulcrum::loop
