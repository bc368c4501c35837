// The router balance losses against their formulas computed by hand, the
// auxiliary-gradient attachment, expert loads, DeepSeek-V3's bias update,
// and a MoE block that adds its balance loss to the objective in training.
#include "trainer/models/moe_balance.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "trainer/models/moe_block.h"

namespace fulcrum::models {
namespace {

// E * sum_e f_e P_e by loops (f_e = E * count_e / (n k)).
double BalanceByHand(const torch::Tensor& scores, const torch::Tensor& ids) {
  const int64_t n = scores.size(0), e = scores.size(1), k = ids.size(1);
  std::vector<double> count(static_cast<size_t>(e), 0.0), prob(static_cast<size_t>(e), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) count[static_cast<size_t>(ids[t][j].item<int64_t>())] += 1;
    for (int64_t x = 0; x < e; ++x) prob[static_cast<size_t>(x)] += scores[t][x].item<double>() / n;
  }
  double sum = 0.0;
  for (int64_t x = 0; x < e; ++x) {
    sum += static_cast<double>(e) * count[static_cast<size_t>(x)] / static_cast<double>(n * k) *
           prob[static_cast<size_t>(x)];
  }
  return sum;
}

Routing RandomRouting(int64_t n, int64_t e, int64_t k, uint64_t seed) {
  torch::manual_seed(seed);
  Routing r;
  r.logits = torch::randn({n, e});
  r.scores = torch::softmax(r.logits, -1);
  r.expert_ids = std::get<1>(torch::topk(r.scores, k, -1));
  r.weights = std::get<0>(torch::topk(r.scores, k, -1));
  return r;
}

MoeBalanceOptions Options(AuxLoss aux, double coeff, double z = 0.0) {
  MoeBalanceOptions o;
  o.aux_loss = aux;
  o.aux_loss_coeff = coeff;
  o.z_loss_coeff = z;
  return o;
}

TEST(MoeBalanceTest, ParsesTheRecipeNames) {
  EXPECT_EQ(*ParseAuxLoss("none"), AuxLoss::kNone);
  EXPECT_EQ(*ParseAuxLoss("switch"), AuxLoss::kSwitch);
  EXPECT_EQ(*ParseAuxLoss("seq"), AuxLoss::kSequence);
  EXPECT_FALSE(ParseAuxLoss("aux").ok());
}

TEST(MoeBalanceTest, PerfectBalanceCostsTheCoefficient) {
  // 8 tokens, 4 experts, top-2: every expert chosen 4 times, uniform scores.
  Routing r;
  r.scores = torch::full({8, 4}, 0.25);
  r.logits = torch::zeros({8, 4});
  r.expert_ids = torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}).view({8, 2});
  for (AuxLoss aux : {AuxLoss::kSwitch, AuxLoss::kSequence}) {
    EXPECT_NEAR(RouterBalanceLoss(r, 4, 2, false, Options(aux, 0.01)).item<double>(), 0.01, 1e-9);
  }
  // Every token on experts 0 and 1: f = (2, 2, 0, 0), so sum f P is 1 again
  // with uniform scores, but 2 when the scores follow the choice.
  r.expert_ids = torch::tensor({0, 1}).repeat({8, 1});
  r.scores = torch::tensor({0.5, 0.5, 0.0, 0.0}).repeat({8, 1});
  EXPECT_NEAR(RouterBalanceLoss(r, 4, 1, false, Options(AuxLoss::kSwitch, 1.0)).item<double>(), 2.0,
              1e-6);
}

TEST(MoeBalanceTest, SwitchAndSequenceLossesMatchTheFormula) {
  const Routing r = RandomRouting(12, 6, 2, 3);
  EXPECT_NEAR(RouterBalanceLoss(r, 6, 3, false, Options(AuxLoss::kSwitch, 0.1)).item<double>(),
              0.1 * BalanceByHand(r.scores, r.expert_ids), 1e-6);
  double per_row = 0.0;
  for (int64_t row = 0; row < 3; ++row) {
    per_row += BalanceByHand(r.scores.narrow(0, 4 * row, 4), r.expert_ids.narrow(0, 4 * row, 4));
  }
  EXPECT_NEAR(RouterBalanceLoss(r, 6, 3, false, Options(AuxLoss::kSequence, 0.1)).item<double>(),
              0.1 * per_row / 3, 1e-6);
}

TEST(MoeBalanceTest, SigmoidScoresAreNormalisedPerToken) {
  Routing r = RandomRouting(10, 4, 2, 5);
  const double softmax_loss =
      RouterBalanceLoss(r, 4, 1, false, Options(AuxLoss::kSwitch, 1.0)).item<double>();
  r.scores = r.scores * 3.0;  // per-token sums of 3: normalised back
  EXPECT_NEAR(RouterBalanceLoss(r, 4, 1, true, Options(AuxLoss::kSwitch, 1.0)).item<double>(),
              softmax_loss, 1e-6);
}

TEST(MoeBalanceTest, ZLossIsTheMeanSquaredLogSumExp) {
  const Routing r = RandomRouting(7, 5, 2, 7);
  const double expected = 0.001 * torch::logsumexp(r.logits, -1).square().mean().item<double>();
  EXPECT_NEAR(RouterBalanceLoss(r, 5, 1, false, Options(AuxLoss::kNone, 0.0, 0.001)).item<double>(),
              expected, 1e-9);
  EXPECT_FALSE(RouterBalanceLoss(r, 5, 1, false, Options(AuxLoss::kNone, 0.5)).defined());
  EXPECT_FALSE(RouterBalanceLoss(r, 5, 1, false, Options(AuxLoss::kSwitch, 0.0)).defined());
}

TEST(MoeBalanceTest, AttachedLossGetsTheWeightAsItsGradient) {
  torch::Tensor x = torch::randn({3, 4}).requires_grad_(true);
  torch::Tensor w = torch::randn({5}).requires_grad_(true);
  const torch::Tensor loss = (w * w).sum();
  const torch::Tensor y = AttachAuxLossGradient(x * 2, loss, 0.25);
  EXPECT_TRUE(torch::equal(y, x * 2));
  (y * 3).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), torch::full({3, 4}, 6.0)));
  EXPECT_TRUE(torch::allclose(w.grad(), 0.25 * 2 * w.detach()));
}

TEST(MoeBalanceTest, LoadsCountTokensAndTheBiasMovesTowardsBalance) {
  const torch::Tensor ids = torch::tensor({0, 1, 1, 2, 1, 3}, torch::kLong).view({3, 2});
  const torch::Tensor loads = ExpertLoads(ids, 5);
  EXPECT_TRUE(torch::equal(loads, torch::tensor({1.0, 3.0, 1.0, 1.0, 0.0}, torch::kDouble)));
  torch::Tensor bias = torch::zeros({4});
  UpdateCorrectionBias(bias, torch::tensor({1.0, 3.0, 2.0, 2.0}), 0.001);
  EXPECT_TRUE(torch::allclose(bias, torch::tensor({0.001f, -0.001f, 0.0f, 0.0f})));
}

ModelConfig SmallMixtral() {
  ModelConfig config;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.moe.style = MoeStyle::kMixtral;
  config.moe.num_experts = 4;
  config.moe.experts_per_token = 2;
  config.moe.expert_intermediate_size = 8;
  config.moe.normalize_weights = true;
  return config;
}

// In training the block's gradient is that of (output . g) + weight x the
// balance loss of its routing; in eval nothing is added or counted.
TEST(MoeBalanceTest, BlockAddsItsBalanceLossInTrainingOnly) {
  torch::manual_seed(11);
  MoeBlock block(SmallMixtral(), torch::TensorOptions());
  {
    // The block's parameters start uninitialised (torch::empty): without
    // values of its own the test read whatever the heap held (flaky).
    torch::NoGradGuard no_grad;
    for (auto& p : block->parameters()) p.copy_(torch::randn_like(p) * 0.4);
  }
  const torch::Tensor x = torch::randn({2, 5, 16});
  const torch::Tensor g = torch::randn({2, 5, 16});
  const MoeBalanceOptions options = Options(AuxLoss::kSequence, 0.3, 0.01);
  auto router_grad = [&](bool balance) {
    block->zero_grad();
    MoeBalanceOptions o = options;
    o.micro_batch_weight = 0.5;
    block->SetBalance(balance ? o : MoeBalanceOptions());
    (block->forward(x) * g).sum().backward();
    return block->gate->weight.grad().clone();
  };
  block->train();
  const torch::Tensor plain = router_grad(false);
  block->TakeStepStats();
  const torch::Tensor with_balance = router_grad(true);
  const MoeBlockImpl::StepStats stats = block->TakeStepStats();
  EXPECT_DOUBLE_EQ(stats.loads.sum().item<double>(), 2 * 5 * 2);
  // The balance loss by itself, from the same routing.
  block->zero_grad();
  const torch::Tensor loss =
      RouterBalanceLoss(block->gate->forward(x.reshape({-1, 16})), 4, 2, false, options);
  EXPECT_NEAR(stats.balance_loss_sum.item<double>(), loss.item<double>(), 1e-6);
  (0.5 * loss).backward();
  EXPECT_TRUE(torch::allclose(with_balance, plain + block->gate->weight.grad(), 1e-5, 1e-6));

  block->eval();
  block->SetBalance(options);
  block->forward(x);
  const MoeBlockImpl::StepStats none = block->TakeStepStats();
  EXPECT_EQ(none.loads.sum().item<double>(), 0.0);
  EXPECT_EQ(none.balance_loss_sum.item<double>(), 0.0);
}

TEST(MoeBalanceTest, MoeBlocksFindsEveryBlockInOrder) {
  torch::nn::Sequential model;
  MoeBlock a(SmallMixtral(), torch::TensorOptions());
  MoeBlock b(SmallMixtral(), torch::TensorOptions());
  model->push_back(torch::nn::Linear(2, 2));
  model->push_back(a);
  model->push_back(b);
  const std::vector<MoeBlockImpl*> blocks = MoeBlocks(*model);
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0], a.get());
  EXPECT_EQ(blocks[1], b.get());
}

}  // namespace
}  // namespace fulcrum::models
