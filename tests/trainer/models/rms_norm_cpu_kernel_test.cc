// The CPU RMSNorm kernels against fp64 RMSNorm and its gradients: widths
// that are and are not multiples of the vector width, row counts that are
// and are not multiples of the weight gradient's blocks, leading dims; the
// values bitwise those of the ops for the same statistics; the weight's
// gradient the same bits at 1 and 2 threads; tensors the kernels do not
// take are said so.
#include "trainer/models/rms_norm_cpu_kernel.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <string>

#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

using testing::ExpectCloseToLargest;

constexpr double kEps = 1e-5;

struct Reference {
  torch::Tensor rstd, values, dx, dw;
};

// RMSNorm in fp64 with autograd's gradients.
Reference Expected(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& grad) {
  const torch::Tensor x64 = x.to(torch::kDouble).set_requires_grad(true);
  const torch::Tensor w64 = weight.to(torch::kDouble).set_requires_grad(true);
  const torch::Tensor rstd = torch::rsqrt(x64.pow(2).mean(-1, /*keepdim=*/true) + kEps);
  const torch::Tensor values = w64 * (x64 * rstd);
  (values * grad.to(torch::kDouble)).sum().backward();
  return {rstd.detach(), values.detach(), x64.grad(), w64.grad()};
}

TEST(RmsNormCpuKernelTest, MatchesFp64AtAnyWidthAndRowCount) {
  torch::manual_seed(0);
  for (const int64_t cols : {1, 7, 8, 29, 64, 1024}) {
    for (const int64_t rows : {1, 31, 32, 77}) {
      const std::string name = "rows " + std::to_string(rows) + " cols " + std::to_string(cols);
      const torch::Tensor x = torch::randn({rows, cols}) * 3;
      const torch::Tensor weight = torch::rand({cols}) + 0.5;
      const torch::Tensor grad = torch::randn({rows, cols});
      const Reference want = Expected(x, weight, grad);
      const torch::Tensor rstd = RmsNormStatisticsCpu(x, kEps);
      ASSERT_EQ(rstd.sizes(), (std::vector<int64_t>{rows, 1})) << name;
      ExpectCloseToLargest(rstd, want.rstd, 1e-6, name + " rstd");
      ExpectCloseToLargest(RmsNormValuesCpu(x, rstd, weight), want.values, 1e-6, name + " values");
      const RmsNormGradsCpu grads = RmsNormBackwardCpu(x, rstd, weight, grad, true, true);
      ExpectCloseToLargest(grads.x, want.dx, 1e-5, name + " dx");
      ExpectCloseToLargest(grads.weight, want.dw, 1e-5, name + " dw");
    }
  }
}

TEST(RmsNormCpuKernelTest, LeadingDimsAndEitherGradientAlone) {
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({3, 5, 48}), grad = torch::randn({3, 5, 48});
  const torch::Tensor weight = torch::rand({48}) + 0.5;
  const Reference want = Expected(x, weight, grad);
  const torch::Tensor rstd = RmsNormStatisticsCpu(x, kEps);
  EXPECT_EQ(rstd.sizes(), (std::vector<int64_t>{3, 5, 1}));
  const RmsNormGradsCpu only_x = RmsNormBackwardCpu(x, rstd, weight, grad, true, false);
  ExpectCloseToLargest(only_x.x, want.dx, 1e-5, "dx alone");
  EXPECT_FALSE(only_x.weight.defined());
  const RmsNormGradsCpu only_w = RmsNormBackwardCpu(x, rstd, weight, grad, false, true);
  EXPECT_FALSE(only_w.x.defined());
  ExpectCloseToLargest(only_w.weight, want.dw, 1e-5, "dw alone");
}

TEST(RmsNormCpuKernelTest, ValuesAreThoseOfTheOpsForTheSameStatistics) {
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({70, 29}) * 5, weight = torch::randn({29});
  const torch::Tensor rstd = RmsNormStatisticsCpu(x, kEps);
  EXPECT_TRUE(torch::equal(RmsNormValuesCpu(x, rstd, weight), weight * (x * rstd)));
}

TEST(RmsNormCpuKernelTest, WeightGradientBitsDoNotDependOnTheThreads) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({1000, 64}), grad = torch::randn({1000, 64});
  const torch::Tensor weight = torch::rand({64}) + 0.5;
  const torch::Tensor rstd = RmsNormStatisticsCpu(x, kEps);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const RmsNormGradsCpu one = RmsNormBackwardCpu(x, rstd, weight, grad, true, true);
  at::set_num_threads(2);
  const RmsNormGradsCpu two = RmsNormBackwardCpu(x, rstd, weight, grad, true, true);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.weight, two.weight));
  EXPECT_TRUE(torch::equal(one.x, two.x));
}

TEST(RmsNormCpuKernelTest, SaysWhichTensorsItTakes) {
  const torch::Tensor x = torch::randn({4, 8});
  EXPECT_TRUE(RmsNormCpuKernelTakes({x, torch::ones({8}), torch::Tensor()}));
  EXPECT_FALSE(RmsNormCpuKernelTakes({x.to(torch::kBFloat16)}));
  EXPECT_FALSE(RmsNormCpuKernelTakes({x.t()}));  // not contiguous
  EXPECT_FALSE(RmsNormCpuKernelTakes({x.to(torch::kDouble)}));
}

}  // namespace
}  // namespace fulcrum::models
