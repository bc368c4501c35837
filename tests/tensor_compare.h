// Comparing a fused op's tensors with those of the plain ops it replaces.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>

namespace fulcrum::testing {

// got equals expected within tol of the largest magnitude (at least 1):
// sums rounded in another order differ most where they cancel, and bf16's
// rounding scales with the values. Both undefined passes.
inline void ExpectCloseToLargest(const torch::Tensor& got, const torch::Tensor& expected,
                                 double tol, const std::string& what) {
  ASSERT_EQ(got.defined(), expected.defined()) << what;
  if (!got.defined()) return;
  EXPECT_EQ(got.sizes(), expected.sizes()) << what;
  const torch::Tensor want = expected.to(torch::kFloat);
  const double diff = (got.to(torch::kFloat) - want).abs().max().item<double>();
  EXPECT_LE(diff, tol * std::max(1.0, want.abs().max().item<double>())) << what;
}

}  // namespace fulcrum::testing
