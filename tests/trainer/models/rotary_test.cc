// YaRN rope scaling (HF transformers 4.57 _compute_yarn_parameters) against an
// independent double-precision re-implementation, the attention factor, and
// the unscaled / linear paths.
#include "trainer/models/rotary.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace fulcrum::models {
namespace {

// DeepSeek-V3's rope_scaling (config.json), max_position_embeddings 163840.
RopeScaling DeepSeekV3Yarn() {
  RopeScaling s;
  s.type = "yarn";
  s.factor = 40.0;
  s.original_max_position_embeddings = 4096;
  s.beta_fast = 32.0;
  s.beta_slow = 1.0;
  s.mscale = 1.0;
  s.mscale_all_dim = 1.0;
  return s;
}
constexpr int64_t kV3MaxPositions = 163840;

// The paper's formulas written out in double: dims with more than beta_fast
// rotations over the original context keep their frequency, those with fewer
// than beta_slow are divided by the factor, a linear ramp between.
std::vector<double> ReferenceYarn(int64_t dim, double theta, double factor, double context,
                                  double beta_fast, double beta_slow, bool truncate) {
  const auto dim_of = [&](double rotations) {
    return dim * std::log(context / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  double low = dim_of(beta_fast), high = dim_of(beta_slow);
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  std::vector<double> out;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double base_freq = 1.0 / std::pow(theta, 2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);  // 1 = interpolate
    out.push_back(base_freq / factor * ramp + base_freq * (1 - ramp));
  }
  return out;
}

void ExpectMatches(const torch::Tensor& got, const std::vector<double>& want) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  ASSERT_EQ(got.scalar_type(), torch::kFloat);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i].item<double>(), want[i], 2e-6 * want[i]) << "i=" << i;
  }
}

TEST(YarnRopeTest, DeepSeekV3InvFreqMatchesReference) {
  const torch::Tensor got = RopeInvFreq(64, 10000.0, DeepSeekV3Yarn(), kV3MaxPositions);
  // factor = 163840 / 4096 = 40, correction range at the original 4096.
  ExpectMatches(got, ReferenceYarn(64, 10000.0, 40.0, 4096.0, 32.0, 1.0, true));
}

TEST(YarnRopeTest, HandCheckedValues) {
  const torch::Tensor got = RopeInvFreq(64, 10000.0, DeepSeekV3Yarn(), kV3MaxPositions);
  // Correction range: floor(64 ln(4096 / 64pi) / 2 ln 1e4) = floor(10.47) = 10,
  // ceil(64 ln(4096 / 2pi) / 2 ln 1e4) = ceil(22.51) = 23.
  EXPECT_NEAR(got[0].item<double>(), 1.0, 1e-7);  // i <= 10: unchanged
  EXPECT_NEAR(got[10].item<double>(), std::pow(1e4, -20.0 / 64), 1e-6 * std::pow(1e4, -20.0 / 64));
  // i = 16: ramp (16 - 10) / 13; 1e4^-0.5 = 0.01 blended with 0.01 / 40.
  const double ramp = 6.0 / 13.0;
  EXPECT_NEAR(got[16].item<double>(), 0.01 * (1 - ramp) + 0.00025 * ramp, 1e-8);
  EXPECT_NEAR(got[16].item<double>(), 0.0055, 1e-8);
  // i >= 23: divided by the factor.
  const double last = std::pow(1e4, -62.0 / 64) / 40.0;
  EXPECT_NEAR(got[31].item<double>(), last, 1e-6 * last);
}

TEST(YarnRopeTest, WithoutOriginalUsesFactorAtMaxPositions) {
  RopeScaling s = DeepSeekV3Yarn();
  s.original_max_position_embeddings = 0;
  s.factor = 8.0;
  s.beta_fast = 0.0;  // absent: defaults 32 / 1
  s.beta_slow = 0.0;
  ExpectMatches(RopeInvFreq(16, 5e5, s, 2048),
                ReferenceYarn(16, 5e5, 8.0, 2048.0, 32.0, 1.0, true));
}

TEST(YarnRopeTest, TruncateFalseKeepsFractionalRange) {
  RopeScaling s = DeepSeekV3Yarn();
  s.truncate = false;
  const torch::Tensor got = RopeInvFreq(64, 10000.0, s, kV3MaxPositions);
  ExpectMatches(got, ReferenceYarn(64, 10000.0, 40.0, 4096.0, 32.0, 1.0, false));
  // Differs from the truncated one inside the ramp.
  const torch::Tensor truncated = RopeInvFreq(64, 10000.0, DeepSeekV3Yarn(), kV3MaxPositions);
  EXPECT_GT((got - truncated).abs().max().item<double>(), 1e-5);
}

TEST(YarnRopeTest, AttentionFactor) {
  RopeScaling s = DeepSeekV3Yarn();
  // mscale == mscale_all_dim: the ratio is 1 (DeepSeek-V3).
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(s, kV3MaxPositions), 1.0);
  s.mscale = 0.707;
  const double want = (0.1 * 0.707 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1);
  EXPECT_NEAR(RopeAttentionFactor(s, kV3MaxPositions), want, 1e-12);
  // Without mscale_all_dim: get_mscale(factor) = 0.1 ln 40 + 1 = 1.368888.
  s.mscale = 0.0;
  s.mscale_all_dim = 0.0;
  EXPECT_NEAR(RopeAttentionFactor(s, kV3MaxPositions), 1.3688879454, 1e-9);
  // The factor comes from max_position_embeddings / original when both exist.
  EXPECT_NEAR(RopeAttentionFactor(s, 8192), 0.1 * std::log(2.0) + 1, 1e-12);
  s.attention_factor = 0.5;  // explicit wins
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(s, kV3MaxPositions), 0.5);
  RopeScaling linear;
  linear.type = "linear";
  linear.factor = 4.0;
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(linear), 1.0);
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(RopeScaling{}), 1.0);
  EXPECT_DOUBLE_EQ(YarnGetMscale(1.0, 5.0), 1.0);
}

TEST(YarnRopeTest, CosSinCarryTheAttentionFactor) {
  const torch::Tensor inv_freq = RopeInvFreq(8, 10000.0, RopeScaling{});
  const torch::Tensor positions = torch::arange(5, torch::kLong).view({1, 5});
  const RopeCosSin plain = ComputeRopeCosSin(inv_freq, positions, torch::kFloat);
  const RopeCosSin scaled = ComputeRopeCosSin(inv_freq, positions, torch::kFloat, 1.25);
  ASSERT_EQ(scaled.cos.sizes(), torch::IntArrayRef({1, 1, 5, 8}));
  EXPECT_TRUE(torch::allclose(scaled.cos, plain.cos * 1.25));
  EXPECT_TRUE(torch::allclose(scaled.sin, plain.sin * 1.25));
  EXPECT_FLOAT_EQ(plain.cos[0][0][0][0].item<float>(), 1.0f);
}

TEST(YarnRopeTest, UnscaledAndLinearUnchanged) {
  const torch::Tensor plain = RopeInvFreq(8, 10000.0, RopeScaling{});
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(plain[i].item<double>(), std::pow(1e4, -2.0 * i / 8), 1e-7);
  }
  RopeScaling linear;
  linear.type = "linear";
  linear.factor = 2.0;
  // max_position_embeddings is ignored outside yarn.
  EXPECT_TRUE(torch::equal(RopeInvFreq(8, 10000.0, linear, 4096), plain / 2.0));
}

// ApplyRope's fp32 CPU kernel (one pass each way) against the ops in fp64:
// x read from [B, T, H, D] memory (the projection's transposed view) and
// contiguous, tables per sequence and shared; the output [B, H, T, D]
// contiguous, the gradient (the rotation's transpose) in x's layout.
TEST(ApplyRopeTest, KernelMatchesTheOpsBothWays) {
  torch::manual_seed(3);
  const int64_t b = 2, h = 3, t = 5, d = 8;
  const torch::Tensor inv_freq =
      1.0 / torch::pow(10000.0, torch::arange(0, d, 2).to(torch::kDouble) / d);
  for (const bool per_sequence : {true, false}) {
    const torch::Tensor positions =
        per_sequence ? torch::randint(0, 50, {b, t}) : torch::arange(t).unsqueeze(0);
    const RopeCosSin rope = ComputeRopeCosSin(inv_freq.to(torch::kFloat), positions, torch::kFloat);
    for (const bool transposed : {true, false}) {
      const torch::Tensor base =
          transposed ? torch::randn({b, t, h, d}).transpose(1, 2) : torch::randn({b, h, t, d});
      const torch::Tensor x = base.clone(at::MemoryFormat::Preserve).requires_grad_(true);
      const torch::Tensor y = ApplyRope(x, rope);
      const torch::Tensor dy = torch::randn({b, h, t, d});
      y.backward(dy);
      // The reference in fp64 through the ops' graph.
      const torch::Tensor xd = x.detach().to(torch::kDouble).requires_grad_(true);
      const torch::Tensor cos = rope.cos.to(torch::kDouble), sin = rope.sin.to(torch::kDouble);
      const torch::Tensor rotated =
          torch::cat({-xd.narrow(-1, d / 2, d / 2), xd.narrow(-1, 0, d / 2)}, -1);
      const torch::Tensor want = xd * cos + rotated * sin;
      want.backward(dy.to(torch::kDouble));
      const std::string name = std::string(per_sequence ? "per sequence" : "shared") +
                               (transposed ? ", transposed x" : ", contiguous x");
      EXPECT_LT((y.to(torch::kDouble) - want).abs().max().item<double>(), 1e-5) << name;
      EXPECT_LT((x.grad().to(torch::kDouble) - xd.grad()).abs().max().item<double>(), 1e-5) << name;
      EXPECT_TRUE(y.is_contiguous()) << name;
      EXPECT_EQ(x.grad().strides(), x.strides()) << name;
    }
  }
}

TEST(YarnRopeDeathTest, YarnWithoutMaxPositionsIsABug) {
  EXPECT_DEATH(RopeInvFreq(64, 10000.0, DeepSeekV3Yarn()), "max_position_embeddings");
}

}  // namespace
}  // namespace fulcrum::models
