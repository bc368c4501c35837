#include "trainer/generate/sampler.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

namespace fulcrum::generate {
namespace {

TEST(SamplerTest, TemperatureZeroIsArgmax) {
  Sampler sampler({0.0, 0.5, 7});
  const torch::Tensor logits = torch::tensor({0.1f, 2.0f, -1.0f, 1.9f});
  for (int i = 0; i < 5; ++i) EXPECT_EQ(sampler.Next(logits), 1);
  EXPECT_EQ(sampler.Next(torch::tensor({3.0f, -2.0f, 2.0f})), 0);
}

TEST(SamplerTest, NucleusKeepsSmallestSetReachingTopP) {
  // probs 0.5, 0.25, 0.125, 0.125 (logits = log probs, fp32: ~1e-9 off).
  const torch::Tensor logits = torch::tensor({0.5, 0.125, 0.25, 0.125}).log();
  torch::Tensor p = NucleusProbs(logits, 1.0, 0.7);
  // 0.5 < 0.7 so token 2 (0.25) crosses and is kept; the rest dropped.
  EXPECT_NEAR(p[0].item<double>(), 0.5 / 0.75, 1e-6);
  EXPECT_NEAR(p[2].item<double>(), 0.25 / 0.75, 1e-6);
  EXPECT_EQ(p[1].item<double>(), 0.0);
  EXPECT_EQ(p[3].item<double>(), 0.0);
  // A mass the top token alone reaches keeps it alone.
  p = NucleusProbs(logits, 1.0, 0.45);
  EXPECT_NEAR(p[0].item<double>(), 1.0, 1e-12);
  EXPECT_EQ(p[2].item<double>(), 0.0);
  // Tiny top_p keeps the top token only; top_p 1 keeps all.
  p = NucleusProbs(logits, 1.0, 1e-6);
  EXPECT_EQ(p[0].item<double>(), 1.0);
  p = NucleusProbs(logits, 1.0, 1.0);
  EXPECT_NEAR(p[3].item<double>(), 0.125, 1e-6);
  EXPECT_NEAR(p.sum().item<double>(), 1.0, 1e-12);
}

TEST(SamplerTest, TemperatureSharpensAndFlattens) {
  const torch::Tensor logits = torch::tensor({1.0f, 0.0f});
  const double p1 = NucleusProbs(logits, 1.0, 1.0)[0].item<double>();
  const double cold = NucleusProbs(logits, 0.25, 1.0)[0].item<double>();
  const double hot = NucleusProbs(logits, 4.0, 1.0)[0].item<double>();
  EXPECT_NEAR(p1, 1.0 / (1.0 + std::exp(-1.0)), 1e-9);
  EXPECT_GT(cold, p1);
  EXPECT_LT(hot, p1);
  EXPECT_GT(hot, 0.5);
}

std::vector<int64_t> Draw(uint64_t seed, double top_p, int n) {
  Sampler sampler({1.0, top_p, seed});
  const torch::Tensor logits = torch::zeros({16});  // uniform
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(sampler.Next(logits));
  return out;
}

TEST(SamplerTest, SameSeedSameTokensOtherSeedOtherTokens) {
  EXPECT_EQ(Draw(42, 1.0, 50), Draw(42, 1.0, 50));
  EXPECT_NE(Draw(42, 1.0, 50), Draw(43, 1.0, 50));
}

TEST(SamplerTest, SamplesStayInsideTheNucleusAndCoverIt) {
  // probs 0.4 0.3 0.2 0.1: top_p 0.6 keeps tokens 0 and 1 only.
  const torch::Tensor logits = torch::tensor({0.4, 0.3, 0.2, 0.1}).log();
  Sampler sampler({1.0, 0.6, 3});
  std::set<int64_t> seen;
  int zeros = 0;
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    const int64_t id = sampler.Next(logits);
    seen.insert(id);
    zeros += id == 0;
  }
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));
  // Renormalised: P(0) = 0.4 / 0.7 ~ 0.571; 2000 draws -> sd ~ 0.011.
  EXPECT_NEAR(static_cast<double>(zeros) / n, 0.4 / 0.7, 0.05);
}

TEST(SamplerDeathTest, InvalidOptionsAreBugs) {
  EXPECT_DEATH(Sampler({-1.0, 1.0, 0}), "temperature");
  EXPECT_DEATH(Sampler({1.0, 0.0, 0}), "top_p");
}

}  // namespace
}  // namespace fulcrum::generate
