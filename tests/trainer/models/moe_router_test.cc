#include "trainer/models/moe_router.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fulcrum::models {
namespace {

// Logits whose softmax is exactly `probs` (which sum to 1).
torch::Tensor SoftmaxLogits(const std::vector<double>& probs) {
  return torch::log(torch::tensor(probs, torch::kFloat64)).to(torch::kFloat32).unsqueeze(0);
}

// Logits whose sigmoid is `scores`.
torch::Tensor SigmoidLogits(const std::vector<double>& scores) {
  const torch::Tensor s = torch::tensor(scores, torch::kFloat64);
  return torch::log(s / (1.0 - s)).to(torch::kFloat32).unsqueeze(0);
}

std::vector<int64_t> Ids(const Routing& r) {
  const torch::Tensor c = r.expert_ids.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void ExpectWeights(const Routing& r, const std::vector<double>& expected) {
  ASSERT_EQ(r.weights.numel(), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(r.weights.scalar_type(), torch::kFloat32);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(r.weights.view(-1)[static_cast<int64_t>(i)].item<double>(), expected[i], 1e-6)
        << "weight " << i;
  }
}

MoeConfig Mixtral() {
  MoeConfig moe;
  moe.style = MoeStyle::kMixtral;
  moe.num_experts = 4;
  moe.experts_per_token = 2;
  moe.expert_intermediate_size = 8;
  moe.normalize_weights = true;
  return moe;
}

MoeConfig DeepSeekV2() {
  MoeConfig moe;
  moe.style = MoeStyle::kDeepSeek;
  moe.num_experts = 8;
  moe.experts_per_token = 3;
  moe.expert_intermediate_size = 8;
  moe.topk_method = "group_limited_greedy";
  moe.n_group = 4;
  moe.topk_group = 2;
  moe.routed_scaling_factor = 2.0;
  return moe;
}

MoeConfig DeepSeekV3() {
  MoeConfig moe;
  moe.style = MoeStyle::kDeepSeek;
  moe.num_experts = 8;
  moe.experts_per_token = 2;
  moe.expert_intermediate_size = 8;
  moe.scoring = "sigmoid";
  moe.topk_method = "noaux_tc";
  moe.n_group = 4;
  moe.topk_group = 2;
  moe.normalize_weights = true;
  moe.routed_scaling_factor = 2.5;
  moe.correction_bias = true;
  return moe;
}

TEST(RouteTokensTest, MixtralGreedySoftmaxTop2Renormalised) {
  const Routing r = RouteTokens(SoftmaxLogits({0.1, 0.4, 0.2, 0.3}), Mixtral());
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{1, 3}));
  ExpectWeights(r, {0.4 / 0.7, 0.3 / 0.7});
  EXPECT_TRUE(torch::allclose(r.scores, torch::tensor({{0.1f, 0.4f, 0.2f, 0.3f}}), 1e-6, 1e-6));
  EXPECT_EQ(r.logits.sizes(), torch::IntArrayRef({1, 4}));
}

TEST(RouteTokensTest, QwenWithAndWithoutNormTopkProb) {
  MoeConfig moe = Mixtral();
  moe.style = MoeStyle::kQwenMoe;
  moe.normalize_weights = false;
  const torch::Tensor logits = SoftmaxLogits({0.1, 0.4, 0.2, 0.3});
  const Routing plain = RouteTokens(logits, moe);
  EXPECT_EQ(Ids(plain), (std::vector<int64_t>{1, 3}));
  ExpectWeights(plain, {0.4, 0.3});
  moe.normalize_weights = true;
  ExpectWeights(RouteTokens(logits, moe), {0.4 / 0.7, 0.3 / 0.7});
}

TEST(RouteTokensTest, SeveralTokensAreRoutedIndependently) {
  const torch::Tensor logits =
      torch::cat({SoftmaxLogits({0.1, 0.4, 0.2, 0.3}), SoftmaxLogits({0.6, 0.05, 0.25, 0.1})});
  const Routing r = RouteTokens(logits, Mixtral());
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{1, 3, 0, 2}));
  ExpectWeights(r, {0.4 / 0.7, 0.3 / 0.7, 0.6 / 0.85, 0.25 / 0.85});
}

TEST(RouteTokensTest, DeepSeekV2GroupLimitedGreedyDropsTheThirdGroup) {
  // Groups of 2: maxima 0.30, 0.20, 0.19, 0.04 -> groups 0 and 1 kept. A
  // plain top-3 would take expert 4 (0.19, group 2); the group-limited one
  // takes expert 1 (0.05) instead. Not renormalised, x 2.0.
  const torch::Tensor logits = SoftmaxLogits({0.30, 0.05, 0.20, 0.02, 0.19, 0.18, 0.04, 0.02});
  MoeConfig greedy = DeepSeekV2();
  greedy.topk_method = "greedy";
  EXPECT_EQ(Ids(RouteTokens(logits, greedy)), (std::vector<int64_t>{0, 2, 4}));

  const Routing r = RouteTokens(logits, DeepSeekV2());
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{0, 2, 1}));
  ExpectWeights(r, {0.60, 0.40, 0.10});
}

TEST(RouteTokensTest, DeepSeekV3BiasChangesTheChoiceNotTheWeights) {
  // Sigmoid scores; groups of 2.
  const torch::Tensor logits = SigmoidLogits({0.90, 0.10, 0.70, 0.20, 0.50, 0.45, 0.15, 0.05});
  // Without bias: group sums 1.0, 0.9, 0.95, 0.2 -> groups 0 and 2 -> experts 0, 4.
  const Routing unbiased = RouteTokens(logits, DeepSeekV3(), torch::zeros({8}));
  EXPECT_EQ(Ids(unbiased), (std::vector<int64_t>{0, 4}));
  ExpectWeights(unbiased, {2.5 * 0.9 / 1.4, 2.5 * 0.5 / 1.4});

  // +0.6 on expert 3: group 1 sums 1.5 -> groups 1 and 0 -> experts 0 (0.9)
  // and 3 (0.2 + 0.6); the weights use the unbiased 0.9 and 0.2.
  torch::Tensor bias = torch::zeros({8});
  bias[3] = 0.6;
  const Routing r = RouteTokens(logits, DeepSeekV3(), bias);
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{0, 3}));
  ExpectWeights(r, {2.5 * 0.9 / 1.1, 2.5 * 0.2 / 1.1});
  EXPECT_TRUE(torch::allclose(r.scores, torch::sigmoid(logits)));
}

TEST(RouteTokensTest, DeepSeekV3GroupsAreRankedByTheirTopTwoSum) {
  // Group maxima would keep groups 0 (0.95) and 2 (0.9); the top-2 sums keep
  // groups 1 (0.8 + 0.7) and 2 (0.9 + 0.5) and drop group 0 (0.95 + 0.05).
  MoeConfig moe = DeepSeekV3();
  moe.normalize_weights = false;
  moe.routed_scaling_factor = 1.0;
  const torch::Tensor logits = SigmoidLogits({0.95, 0.05, 0.80, 0.70, 0.90, 0.50, 0.10, 0.05});
  const Routing r = RouteTokens(logits, moe, torch::zeros({8}));
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{4, 2}));
  ExpectWeights(r, {0.90, 0.80});
}

TEST(RouteTokensTest, RoutedScalingFactorMultipliesGreedyWeights) {
  MoeConfig moe = Mixtral();
  moe.normalize_weights = false;
  moe.routed_scaling_factor = 3.0;
  ExpectWeights(RouteTokens(SoftmaxLogits({0.1, 0.4, 0.2, 0.3}), moe), {1.2, 0.9});
}

TEST(RouteTokensTest, WeightsAreDifferentiableWithRespectToLogits) {
  torch::manual_seed(5);
  const torch::Tensor base = torch::randn({3, 4});
  const torch::Tensor logits = base.clone().requires_grad_(true);
  const Routing r = RouteTokens(logits, Mixtral());
  const torch::Tensor probe = torch::tensor({{1.0f, 3.0f}, {2.0f, -1.0f}, {0.5f, 4.0f}});
  (r.weights * probe).sum().backward();
  // Renormalised top-2 of a softmax = a softmax over the two chosen logits.
  const torch::Tensor ref_logits = base.clone().requires_grad_(true);
  const torch::Tensor chosen = ref_logits.gather(1, r.expert_ids);
  (torch::softmax(chosen, -1) * probe).sum().backward();
  EXPECT_TRUE(torch::allclose(logits.grad(), ref_logits.grad(), 1e-5, 1e-6));
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);
}

TEST(MoeRouterTest, ParametersAndCorrectionBiasBuffer) {
  const MoeRouter v3(16, DeepSeekV3(), torch::TensorOptions().dtype(torch::kBFloat16));
  EXPECT_EQ(v3->weight.sizes(), torch::IntArrayRef({8, 16}));
  ASSERT_EQ(v3->named_parameters().size(), 1u);
  EXPECT_TRUE(v3->named_parameters().contains("weight"));
  const auto buffers = v3->named_buffers();
  ASSERT_TRUE(buffers.contains("e_score_correction_bias"));
  EXPECT_EQ(buffers["e_score_correction_bias"].scalar_type(), torch::kFloat32);
  EXPECT_TRUE(buffers["e_score_correction_bias"].eq(0).all().item<bool>());

  const MoeRouter mixtral(16, Mixtral(), torch::TensorOptions());
  EXPECT_EQ(mixtral->named_buffers().size(), 0u);
  EXPECT_FALSE(mixtral->e_score_correction_bias.defined());
}

TEST(MoeRouterTest, LogitsFollowEachFamilysPrecision) {
  torch::manual_seed(7);
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  const torch::Tensor x = torch::randn({5, 16}).to(torch::kBFloat16);
  const torch::Tensor w = torch::randn({4, 16}).to(torch::kBFloat16);

  // Mixtral: nn.Linear in bf16, then fp32.
  MoeRouter mixtral(16, Mixtral(), bf16);
  mixtral->weight.set_data(w.clone());
  const Routing rm = mixtral->forward(x);
  EXPECT_TRUE(torch::equal(rm.logits, torch::nn::functional::linear(x, w).to(torch::kFloat32)));

  // DeepSeek: the projection itself in fp32.
  MoeConfig deepseek = DeepSeekV2();
  deepseek.num_experts = 4;
  deepseek.n_group = 1;
  deepseek.topk_group = 1;
  deepseek.experts_per_token = 2;
  MoeRouter ds(16, deepseek, bf16);
  ds->weight.set_data(w.clone());
  const Routing rd = ds->forward(x);
  EXPECT_TRUE(torch::equal(
      rd.logits, torch::nn::functional::linear(x.to(torch::kFloat32), w.to(torch::kFloat32))));
  EXPECT_EQ(rd.weights.scalar_type(), torch::kFloat32);
  EXPECT_EQ(rd.expert_ids.sizes(), torch::IntArrayRef({5, 2}));
}

TEST(MoeRouterTest, ForwardUsesTheCorrectionBuffer) {
  MoeRouter router(2, DeepSeekV3(), torch::TensorOptions());
  // x = [1, 0]: the logits are the first weight column.
  router->weight.set_data(torch::stack(
      {SigmoidLogits({0.90, 0.10, 0.70, 0.20, 0.50, 0.45, 0.15, 0.05})[0], torch::zeros({8})}, 1));
  router->e_score_correction_bias[3] = 0.6;
  const Routing r = router->forward(torch::tensor({{1.0f, 0.0f}}));
  EXPECT_EQ(Ids(r), (std::vector<int64_t>{0, 3}));
}

using RouteTokensDeathTest = ::testing::Test;

TEST(RouteTokensDeathTest, RefusesAnUnknownTopkMethod) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MoeConfig moe = Mixtral();
  moe.topk_method = "best";
  EXPECT_DEATH(RouteTokens(SoftmaxLogits({0.1, 0.4, 0.2, 0.3}), moe), "unknown topk_method best");
}

TEST(RouteTokensDeathTest, RefusesLogitsOfTheWrongWidth) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(RouteTokens(torch::zeros({2, 5}), Mixtral()), "router logits must be");
}

TEST(RouteTokensDeathTest, RefusesGroupsThatDoNotDivideTheExperts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MoeConfig moe = DeepSeekV2();
  moe.n_group = 3;
  EXPECT_DEATH(RouteTokens(torch::zeros({1, 8}), moe), "n_group=3");
}

TEST(RouteTokensDeathTest, NoauxTcRefusesSingleExpertGroups) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MoeConfig moe = DeepSeekV3();
  moe.n_group = 8;
  EXPECT_DEATH(RouteTokens(torch::zeros({1, 8}), moe, torch::zeros({8})), "noaux_tc needs");
}

}  // namespace
}  // namespace fulcrum::models
