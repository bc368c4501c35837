#include "trainer/optim/grad_clip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

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

}  // namespace
}  // namespace fulcrum::optim
