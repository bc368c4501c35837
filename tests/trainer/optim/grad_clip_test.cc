#include "trainer/optim/grad_clip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace fulcrum::optim {
namespace {

struct Params {
  torch::Tensor a = torch::zeros({2}).requires_grad_(true);
  torch::Tensor b = torch::zeros({2, 2}).requires_grad_(true);
  torch::Tensor c = torch::zeros({3}).requires_grad_(true);  // no grad
  Params() {
    a.mutable_grad() = torch::tensor({3.0f, 0.0f});
    b.mutable_grad() = torch::tensor({0.0f, 4.0f, 0.0f, 12.0f}).reshape({2, 2});
  }
  std::vector<torch::Tensor> list() const { return {a, b, c}; }
};

TEST(ClipGradNormTest, ReturnsGlobalNormAndScales) {
  Params p;
  torch::Tensor norm = ClipGradNorm(p.list(), 6.5);
  EXPECT_EQ(norm.dim(), 0);
  EXPECT_EQ(norm.scalar_type(), torch::kFloat);
  EXPECT_FLOAT_EQ(norm.item<float>(), 13.0f);  // sqrt(9 + 16 + 144)
  const float scale = 6.5f / (13.0f + 1e-6f);
  EXPECT_TRUE(torch::allclose(p.a.grad(), torch::tensor({3.0f * scale, 0.0f})));
  EXPECT_NEAR(p.b.grad()[1][1].item<float>(), 12.0f * scale, 1e-5);
  EXPECT_FALSE(p.c.grad().defined());
}

TEST(ClipGradNormTest, NoClippingBelowMaxOrWhenDisabled) {
  Params p;
  EXPECT_FLOAT_EQ(ClipGradNorm(p.list(), 100.0).item<float>(), 13.0f);
  EXPECT_TRUE(torch::equal(p.b.grad(), torch::tensor({0.0f, 4.0f, 0.0f, 12.0f}).reshape({2, 2})));
  EXPECT_FLOAT_EQ(ClipGradNorm(p.list(), 0.0).item<float>(), 13.0f);
  EXPECT_TRUE(torch::equal(p.a.grad(), torch::tensor({3.0f, 0.0f})));
}

TEST(ClipGradNormTest, Bf16GradsAccumulateInFp32) {
  torch::Tensor w = torch::zeros({4096}, torch::kBFloat16).requires_grad_(true);
  w.mutable_grad() = torch::full({4096}, 0.5, torch::kBFloat16);
  torch::Tensor norm = ClipGradNorm({w}, 1.0);
  EXPECT_EQ(norm.scalar_type(), torch::kFloat);
  EXPECT_NEAR(norm.item<float>(), 32.0f, 1e-4);  // 0.5 * sqrt(4096)
  EXPECT_EQ(w.grad().scalar_type(), torch::kBFloat16);
  EXPECT_NEAR(w.grad()[0].item<float>(), 0.5f / 32.0f, 1e-4);
}

TEST(ClipGradNormTest, NoGradsGivesZero) {
  torch::Tensor w = torch::zeros({2}).requires_grad_(true);
  EXPECT_EQ(ClipGradNorm({w}, 1.0).item<float>(), 0.0f);
  EXPECT_EQ(ClipGradNorm({}, 1.0).item<float>(), 0.0f);
}

// The optimizer applies ClipCoefficient as it reads the gradients; it must be
// ClipGradNorm's in-place factor to the bit, or clipping would change the
// training curve.
TEST(ClipCoefficientTest, IsClipGradNormsFactorBitForBit) {
  torch::manual_seed(3);
  for (double max_norm : {1.0, 0.37, 2.5e-3, 1e6}) {
    for (float size : {1e-4f, 0.3f, 1.0f, 7.77f, 1234.5f}) {
      SCOPED_TRACE(testing::Message() << max_norm << " " << size);
      torch::Tensor w = torch::zeros({257}).requires_grad_(true);
      const torch::Tensor g = torch::randn({257}) * size;
      w.mutable_grad() = g.clone();
      const torch::Tensor norm = ClipGradNorm({w}, max_norm);
      const float coefficient = ClipCoefficient(norm.item<float>(), max_norm);
      EXPECT_LE(coefficient, 1.0f);
      EXPECT_TRUE(torch::equal(w.grad(), g * coefficient));
    }
  }
  EXPECT_EQ(ClipCoefficient(13.0f, 0.0), 1.0f);  // disabled
  EXPECT_EQ(ClipCoefficient(0.0f, 1.0), 1.0f);   // no gradient: clamped
  EXPECT_TRUE(std::isnan(ClipCoefficient(std::nanf(""), 1.0)));
  EXPECT_EQ(ClipCoefficient(std::numeric_limits<float>::infinity(), 1.0), 0.0f);
}

}  // namespace
}  // namespace fulcrum::optim
