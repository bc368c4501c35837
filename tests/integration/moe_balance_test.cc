// Expert load balancing end to end through the binary: the router balance
// losses (switch with z-loss on mixtral, DeepSeek's sequence-wise loss on
// deepseek_v2) change the training and reproduce the single-rank curve,
// balance loss and expert loads under dp 2 and ep 2; DeepSeek-V3's
// aux-loss-free bias update moves the correction biases identically under
// ep 2, checkpoints keep them (a resumed run ends with the uninterrupted
// run's biases), an expert capacity drops the same choices under ep 2 and
// tp 2, and the moe keys are refused on a dense model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

struct BalanceCase {
  std::string family;
  std::string balance;  // moe.* overrides
};

class MoeBalanceLayoutTest : public ::testing::TestWithParam<BalanceCase> {};

TEST_P(MoeBalanceLayoutTest, BalanceLossReproducesTheSingleRankRun) {
  const BalanceCase& c = GetParam();
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/" + c.family + "/model";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, "full", root + "/" + name, overrides, ranks);
  };
  const StepLog plain = run("plain", "", 1);
  const StepLog single = run("single", c.balance, 1);
  ASSERT_EQ(single.balance_losses.size(), 10u);
  EXPECT_GT(single.balance_losses.front(), 0.0);
  ASSERT_EQ(single.expert_loads.front().size(), plain.expert_loads.front().size());
  // Without balancing, the busiest expert of some layer is above the mean.
  EXPECT_GT(*std::max_element(plain.expert_loads.front().begin(), plain.expert_loads.front().end()),
            1.0);
  // The balance loss is in the objective: the curve leaves the plain one.
  EXPECT_GT(LargestLossGap(single, plain), 1e-4);
  EXPECT_EQ(plain.balance_losses.front(), 0.0);
  ExpectSameCurve(run("dp2", c.balance + " parallel.dp=2", 2), single, "dp2 " + c.balance);
  ExpectSameCurve(run("ep2", c.balance + " parallel.dp=2 parallel.ep=2", 2), single,
                  "ep2 " + c.balance);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, MoeBalanceLayoutTest,
    ::testing::Values(
        BalanceCase{"mixtral", "moe.aux_loss=switch moe.aux_loss_coeff=0.5 moe.z_loss_coeff=0.01"},
        BalanceCase{"deepseek_v2", "moe.aux_loss=seq moe.aux_loss_coeff=0.5"}),
    [](const auto& info) { return info.param.family; });

// An expert capacity drops the same choices under every layout, padded to
// capacity slots or not: each source rank applies it to its own
// micro-batch's tokens before dispatch, and tp ranks route the whole
// sequence. Dropping changes the training (the curve
// leaves the dropless one) and the drops are counted per layer.
TEST(MoeCapacityTest, CapacityDropsTheSameChoicesUnderEveryLayout) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/mixtral/model";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, "full", root + "/" + name, overrides, ranks);
  };
  const StepLog dropless = run("dropless", "", 1);
  // 16 tokens x top-2 over 8 experts: at most 4 choices per expert.
  const std::string capacity = "moe.capacity_factor=1.0";
  const StepLog single = run("single", capacity, 1);
  ASSERT_EQ(single.tokens_dropped.size(), 10u);
  ASSERT_EQ(single.tokens_dropped.front().size(), 2u);  // one count per MoE layer
  int64_t total = 0;
  for (const auto& step : single.tokens_dropped) {
    for (int64_t layer : step) total += layer;
  }
  EXPECT_GT(total, 0);
  for (const auto& step : dropless.tokens_dropped) {
    EXPECT_EQ(step, (std::vector<int64_t>{0, 0}));
  }
  EXPECT_GT(LargestLossGap(single, dropless), 1e-4);
  ExpectSameCurve(run("ep2", capacity + " parallel.dp=2 parallel.ep=2", 2), single,
                  "ep2 " + capacity);
  ExpectSameCurve(run("tp2", capacity + " parallel.tp=2 parallel.sequence_parallel=true", 2),
                  single, "tp2 sp " + capacity);
  // Padded capacity slots (no host read inside a layer) train alike.
  const std::string padded = capacity + " moe.pad_to_capacity=true";
  ExpectSameCurve(run("ep2_padded", padded + " parallel.dp=2 parallel.ep=2", 2), single,
                  "ep2 " + padded);
}

// A DeepSeek-V3-style model (sigmoid scores, noaux_tc routing with the
// correction bias) made from the deepseek_v2 fixture's shape by fulcrum init.
std::string V3Model(const std::string& root) {
  std::ifstream in(FixturesDir() + "/deepseek_v2/model/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["architectures"] = {"DeepseekV3ForCausalLM"};
  config["model_type"] = "deepseek_v3";
  config["scoring_func"] = "sigmoid";
  config["topk_method"] = "noaux_tc";
  config["norm_topk_prob"] = true;
  config["routed_scaling_factor"] = 2.5;
  config.erase("seq_aux");
  config.erase("aux_loss_alpha");
  WriteFile(root + "/v3.json", config.dump(2));
  const CommandResult r =
      RunFulcrum("init --config " + root + "/v3.json --out " + root + "/v3 --seed 3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return root + "/v3";
}

Tensors Biases(const std::string& checkpoint) {
  Tensors out;
  // Under the model's (HF) names: the checkpoint's "model/<name>".
  for (const auto& [name, tensor] : ReadCheckpointTensors(checkpoint)) {
    if (absl::EndsWith(name, "e_score_correction_bias")) out[name.substr(6)] = tensor;
  }
  return out;
}

TEST(MoeBiasUpdateTest, CorrectionBiasesMoveAlikeUnderExpertParallelismAndResume) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = V3Model(root);
  const std::string update = "moe.bias_update_rate=0.01 checkpoint.every=5 checkpoint.dir=";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    return TrainLayout(model, data, "lora", dir, update + dir + "/ckpt " + overrides, ranks);
  };
  const StepLog single = run("single", "", 1);
  const Tensors first = Biases(root + "/single/ckpt/step-00000005");
  const Tensors last = Biases(root + "/single/ckpt/step-00000010");
  ASSERT_EQ(last.size(), 2u);  // layers 1 and 2 (first_k_dense_replace 1)
  for (const auto& [name, bias] : last) {
    // 10 updates of +-0.01 (0 for an expert exactly at the mean load).
    EXPECT_GT(bias.abs().max().item<double>(), 0.005) << name;
    EXPECT_LE(bias.abs().max().item<double>(), 0.1 + 1e-6) << name;
    EXPECT_FALSE(torch::equal(bias, first.at(name))) << name;
  }
  ExpectSameCurve(run("ep2", "parallel.dp=2 parallel.ep=2", 2), single, "ep2 bias update");
  for (const auto& [name, bias] : Biases(root + "/ep2/ckpt/step-00000010")) {
    EXPECT_TRUE(torch::allclose(bias, last.at(name), 0, 1e-7)) << name;
  }
  // Resumed at step 5 under ep 2: the biases come back from the checkpoint.
  const StepLog tail = run(
      "resumed",
      "parallel.dp=2 parallel.ep=2 checkpoint.resume=" + root + "/single/ckpt/step-00000005", 2);
  ASSERT_EQ(tail.losses.size(), 5u);
  for (size_t s = 0; s < 5; ++s) {
    EXPECT_NEAR(tail.losses[s], single.losses[s + 5], 1e-5 * std::abs(single.losses[s + 5]));
  }
  for (const auto& [name, bias] : Biases(root + "/resumed/ckpt/step-00000010")) {
    EXPECT_TRUE(torch::allclose(bias, last.at(name), 0, 1e-7)) << name;
  }
  // The merged export carries the moved biases.
  const CommandResult r = RunFulcrum("export --checkpoint " + root +
                                     "/single/ckpt --format merged --out " + root + "/merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors exported = ReadTensors(root + "/merged/model.safetensors");
  for (const auto& [name, bias] : last) {
    ASSERT_TRUE(exported.count(name)) << name;
    EXPECT_TRUE(torch::equal(exported.at(name), bias)) << name;
  }
}

TEST(MoeBalanceValidationTest, MoeKeysNeedTheRightModel) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 16, 512);
  struct Case {
    std::string family, overrides, expected;
  };
  const Case cases[] = {
      {"llama", "moe.aux_loss=switch", "moe.aux_loss: needs a mixture-of-experts model"},
      {"mixtral", "moe.bias_update_rate=0.001",
       "moe.bias_update_rate: needs routers with e_score_correction_bias"},
      {"mixtral", "moe.aux_loss=sinkhorn", "moe.aux_loss"},
      {"llama", "moe.capacity_factor=1.25",
       "moe.capacity_factor: needs a mixture-of-experts model"},
      {"mixtral", "moe.capacity_factor=-1", "moe.capacity_factor"},
      {"mixtral", "moe.pad_to_capacity=true", "moe.pad_to_capacity: needs moe.capacity_factor > 0"},
      {"llama", "moe.capacity_factor=1 moe.pad_to_capacity=true",
       "moe.pad_to_capacity: needs a mixture-of-experts model"},
  };
  for (const Case& c : cases) {
    const std::string dir = root + "/" + c.family;
    WriteFile(dir + "/recipe.yaml",
              LayoutRecipe(FixturesDir() + "/" + c.family + "/model", data, "full", dir));
    const CommandResult r =
        RunFulcrum("train " + dir + "/recipe.yaml parallel.dp=2 " + c.overrides, 2);
    EXPECT_NE(r.exit_code, 0) << c.overrides << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("training steps"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace fulcrum::testing
