#include "trainer/models/rms_norm.h"

#include <gtest/gtest.h>

#include "tests/tensor_bytes.h"

namespace fulcrum::models {
namespace {

using testing::KeptForBackward;

// HF's RMSNorm as plain ops: autograd keeps x^2 and (when the weight trains)
// the normalised activations.
torch::Tensor PlainRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const torch::Tensor xf = x.to(torch::kFloat);
  const torch::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * torch::rsqrt(variance + eps)).to(x.scalar_type());
}

struct Case {
  torch::ScalarType dtype;
  bool x_grad, weight_grad;
};

TEST(RmsNormTest, ValuesAndGradientsAreThoseOfThePlainOps) {
  for (const Case c : {Case{torch::kFloat, true, true}, Case{torch::kFloat, true, false},
                       Case{torch::kFloat, false, true}, Case{torch::kBFloat16, true, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << c.dtype << " x_grad " << c.x_grad << " weight_grad " << c.weight_grad);
    torch::manual_seed(1);
    RMSNorm norm(48, 1e-5, torch::TensorOptions().dtype(c.dtype));
    {
      torch::NoGradGuard no_grad;
      norm->weight.uniform_(0.5, 1.5);
    }
    norm->weight.set_requires_grad(c.weight_grad);
    const torch::Tensor x0 = (torch::randn({3, 5, 48}) * 3).to(c.dtype);
    const torch::Tensor up = torch::randn({3, 5, 48}).to(c.dtype);
    const torch::Tensor x1 = x0.clone().set_requires_grad(c.x_grad);
    const torch::Tensor w1 = norm->weight.detach().clone().set_requires_grad(c.weight_grad);
    const torch::Tensor x2 = x0.clone().set_requires_grad(c.x_grad);

    const torch::Tensor expected = PlainRmsNorm(x1, w1, 1e-5);
    const torch::Tensor got = norm->forward(x2);
    ASSERT_EQ(got.scalar_type(), c.dtype);
    if (c.dtype == torch::kFloat) {
      // The CPU kernel's statistics sum in another order.
      EXPECT_TRUE(torch::allclose(got, expected, 1e-6, 1e-6)) << (got - expected).abs().max();
    } else {
      EXPECT_TRUE(torch::equal(got, expected));  // the same ops forward
    }
    (expected.to(torch::kFloat) * up).sum().backward();
    (got.to(torch::kFloat) * up).sum().backward();
    const double tol = c.dtype == torch::kFloat ? 1e-6 : 1e-2;
    if (c.x_grad) {
      EXPECT_TRUE(
          torch::allclose(x2.grad().to(torch::kFloat), x1.grad().to(torch::kFloat), tol, tol))
          << (x2.grad() - x1.grad()).abs().max();
    }
    if (c.weight_grad) {
      EXPECT_TRUE(torch::allclose(norm->weight.grad().to(torch::kFloat),
                                  w1.grad().to(torch::kFloat), tol, tol))
          << (norm->weight.grad() - w1.grad()).abs().max();
    } else {
      EXPECT_FALSE(norm->weight.grad().defined());
    }
  }
}

TEST(RmsNormTest, KeepsOnlyTheInputAndOneStatisticPerRow) {
  const int64_t rows = 512, dim = 64;
  RMSNorm norm(dim, 1e-5, torch::TensorOptions().dtype(torch::kFloat));
  {
    torch::NoGradGuard no_grad;
    norm->weight.fill_(1.0);
  }
  const torch::Tensor x = torch::randn({rows, dim}, torch::requires_grad());
  const int64_t row_statistic = rows * 4;
  const int64_t activation = rows * dim * 4;
  // Full fine-tuning (the weight trains) and LoRA (frozen norm).
  for (const bool weight_grad : {true, false}) {
    norm->weight.set_requires_grad(weight_grad);
    EXPECT_EQ(KeptForBackward([&] { return norm->forward(x); }), row_statistic);
    // The plain ops keep x^2 and, with the weight training, x / rms too.
    const int64_t plain = KeptForBackward([&] { return PlainRmsNorm(x, norm->weight, 1e-5); });
    EXPECT_GE(plain, row_statistic + (weight_grad ? 2 : 1) * activation);
  }
}

}  // namespace
}  // namespace fulcrum::models
