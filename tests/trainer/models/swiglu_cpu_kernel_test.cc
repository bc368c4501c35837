// The CPU SwiGLU kernels against fp64 silu and its derivative: widths that
// are and are not multiples of the vector width, gates spanning +-100 (the
// sigmoid's exp below FLT_MIN on both sides), rows read and written with a
// stride, d_up in place on dp, either gradient alone; a NaN gate gives NaN
// results; tensors the kernels do not take are said so.
#include "trainer/models/swiglu_cpu_kernel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

using testing::ExpectCloseToLargest;

struct Reference {
  torch::Tensor p, d_gate, d_up;
};

Reference Expected(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& dp) {
  const torch::Tensor g = gate.to(torch::kDouble), u = up.to(torch::kDouble);
  const torch::Tensor d = dp.to(torch::kDouble), s = torch::sigmoid(g);
  return {g * s * u, d * u * s * (1 + g * (1 - s)), d * g * s};
}

// Rows of `cols` inside rows of cols + 5: read and written with a stride.
torch::Tensor Strided(const torch::Tensor& x) {
  torch::Tensor wide = torch::full({x.size(0), x.size(1) + 5}, 7.0f);
  wide.narrow(1, 2, x.size(1)).copy_(x);
  return wide.narrow(1, 2, x.size(1));
}

TEST(SwiGluCpuKernelTest, MatchesFp64AtAnyWidthAndStride) {
  torch::manual_seed(0);
  for (const int64_t cols : {1, 7, 8, 29, 64}) {
    for (const bool strided : {false, true}) {
      const std::string name = "cols " + std::to_string(cols) + (strided ? " strided" : "");
      torch::Tensor gate = torch::randn({37, cols}) * 6;
      gate[0].fill_(100.0f);
      gate[1].fill_(-100.0f);
      const torch::Tensor up = torch::randn({37, cols}), dp = torch::randn({37, cols});
      const Reference want = Expected(gate, up, dp);
      const torch::Tensor g = strided ? Strided(gate) : gate, u = strided ? Strided(up) : up;
      ExpectCloseToLargest(SwiGluCpu(g, u), want.p, 1e-6, name + " p");
      torch::Tensor d = strided ? Strided(dp) : dp.clone();
      torch::Tensor d_gate = strided ? Strided(torch::zeros_like(dp)) : torch::empty_like(dp);
      SwiGluBackwardCpu(g, u, d, d_gate, /*up_gradient=*/true);
      ExpectCloseToLargest(d_gate, want.d_gate, 1e-6, name + " d_gate");
      ExpectCloseToLargest(d, want.d_up, 1e-6, name + " d_up in place");
      EXPECT_TRUE(torch::isfinite(d_gate).all().item<bool>()) << name;
    }
  }
}

TEST(SwiGluCpuKernelTest, EitherGradientAlone) {
  torch::manual_seed(1);
  const torch::Tensor gate = torch::randn({5, 19}), up = torch::randn({5, 19});
  const torch::Tensor dp = torch::randn({5, 19});
  const Reference want = Expected(gate, up, dp);
  // d_gate alone: dp is left as it was.
  torch::Tensor d = dp.clone(), d_gate = torch::empty_like(dp);
  SwiGluBackwardCpu(gate, up, d, d_gate, /*up_gradient=*/false);
  ExpectCloseToLargest(d_gate, want.d_gate, 1e-6, "d_gate alone");
  EXPECT_TRUE(torch::equal(d, dp));
  // d_up alone.
  SwiGluBackwardCpu(gate, up, d, torch::Tensor(), /*up_gradient=*/true);
  ExpectCloseToLargest(d, want.d_up, 1e-6, "d_up alone");
}

TEST(SwiGluCpuKernelTest, NanGateGivesNan) {
  torch::Tensor gate = torch::randn({2, 11});
  gate[1][3] = std::numeric_limits<float>::quiet_NaN();
  gate[1][9] = std::numeric_limits<float>::quiet_NaN();
  const torch::Tensor up = torch::ones({2, 11});
  const torch::Tensor p = SwiGluCpu(gate, up);
  EXPECT_TRUE(std::isnan(p[1][3].item<float>()));
  EXPECT_TRUE(std::isnan(p[1][9].item<float>()));
  EXPECT_TRUE(torch::isfinite(p[0]).all().item<bool>());
  torch::Tensor d = torch::ones({2, 11}), d_gate = torch::empty({2, 11});
  SwiGluBackwardCpu(gate, up, d, d_gate, /*up_gradient=*/true);
  EXPECT_TRUE(std::isnan(d_gate[1][3].item<float>()));
  EXPECT_TRUE(std::isnan(d[1][9].item<float>()));
}

// Equal values and NaNs in the same places (NaN payloads may differ).
bool SameValues(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::equal(a.isnan(), b.isnan()) &&
         torch::equal(a.to(torch::kFloat).nan_to_num(0), b.to(torch::kFloat).nan_to_num(0));
}

// bf16: the fp32 kernel's results on the same values, rounded once, to the
// bit, at widths with and without a vector tail, NaN gates included.
TEST(SwiGluCpuKernelTest, Bf16IsTheFp32ResultRoundedOnce) {
  torch::manual_seed(8);
  for (int64_t cols : {64, 45, 3}) {
    SCOPED_TRACE(cols);
    const torch::Tensor gate = (torch::randn({9, cols}) * 4).to(torch::kBFloat16);
    const torch::Tensor up = torch::randn({9, cols}).to(torch::kBFloat16);
    gate[2][1] = std::nanf("");
    const torch::Tensor dp = torch::randn({9, cols}).to(torch::kBFloat16);
    const torch::Tensor g32 = gate.to(torch::kFloat), u32 = up.to(torch::kFloat);

    const torch::Tensor p = SwiGluCpu(gate, up);
    EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(SameValues(p, SwiGluCpu(g32, u32).to(torch::kBFloat16)));

    torch::Tensor d_up = dp.clone(), d_gate = torch::empty_like(dp);
    SwiGluBackwardCpu(gate, up, d_up, d_gate, /*up_gradient=*/true);
    torch::Tensor d_up32 = dp.to(torch::kFloat), d_gate32 = torch::empty_like(d_up32);
    SwiGluBackwardCpu(g32, u32, d_up32, d_gate32, /*up_gradient=*/true);
    EXPECT_TRUE(SameValues(d_up, d_up32.to(torch::kBFloat16)));
    EXPECT_TRUE(SameValues(d_gate, d_gate32.to(torch::kBFloat16)));
    EXPECT_TRUE(std::isnan(d_gate[2][1].item<float>()));
    // And near torch's bf16 ops, which round twice.
    const torch::Tensor ops = torch::silu(gate).mul(up);
    EXPECT_TRUE(torch::allclose(p.to(torch::kFloat).nan_to_num(0),
                                ops.to(torch::kFloat).nan_to_num(0), 2e-2, 1e-2));
  }
}

TEST(SwiGluCpuKernelTest, SaysWhichTensorsItTakes) {
  const torch::Tensor x = torch::randn({4, 6});
  EXPECT_TRUE(SwiGluCpuKernelTakes({x, x, torch::Tensor()}));
  EXPECT_FALSE(SwiGluCpuKernelTakes({x, x.to(torch::kBFloat16)}));  // mixed
  EXPECT_TRUE(SwiGluCpuKernelTakes({x.to(torch::kBFloat16), x.to(torch::kBFloat16)}));
  EXPECT_FALSE(SwiGluCpuKernelTakes({x.to(torch::kHalf), x.to(torch::kHalf)}));
  EXPECT_FALSE(SwiGluCpuKernelTakes({x, x.t().contiguous().t()}));  // column-major
  EXPECT_FALSE(SwiGluCpuKernelTakes({x, torch::randn({4, 7})}));
  EXPECT_FALSE(SwiGluCpuKernelTakes({x.view({2, 2, 6}), x.view({2, 2, 6})}));
}

}  // namespace
}  // namespace fulcrum::models
