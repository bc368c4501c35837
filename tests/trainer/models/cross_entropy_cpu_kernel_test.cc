// The CPU cross-entropy kernel against fp64 log_softmax: losses and
// gradients (softmax - onehot) for widths that are and are not multiples of
// the vector width, logits spanning +-100 (exps below FLT_MIN), rows read
// with a stride, an ignored row (loss 0, zero gradient), the gradient written
// over the logits, no gradient; rows holding NaN or +inf, or only -inf, are
// NaN as log_softmax gives, and a -inf logit among finite ones counts 0.
#include "trainer/models/cross_entropy_cpu_kernel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

constexpr int64_t kIgnore = -100;

struct Expected {
  torch::Tensor loss, grad;
};

Expected Reference(const torch::Tensor& logits, const std::vector<int64_t>& targets) {
  const torch::Tensor log_probs = torch::log_softmax(logits.to(torch::kDouble), 1);
  Expected want{torch::zeros({logits.size(0)}, torch::kDouble), log_probs.exp()};
  for (int64_t r = 0; r < logits.size(0); ++r) {
    if (targets[r] == kIgnore) {
      want.grad[r].zero_();
      continue;
    }
    want.loss[r] = -log_probs[r][targets[r]];
    want.grad[r][targets[r]] -= 1.0;
  }
  return want;
}

void RunKernel(const torch::Tensor& logits, const std::vector<int64_t>& targets,
               torch::Tensor& loss, float* grad, int64_t grad_ld) {
  loss = torch::empty({logits.size(0)});
  CrossEntropyCpuKernel(logits.data_ptr<float>(), logits.stride(0), targets.data(), logits.size(0),
                        logits.size(1), kIgnore, loss.data_ptr<float>(), grad, grad_ld);
}

TEST(CrossEntropyCpuKernelTest, MatchesLogSoftmaxAcrossWidthsAndMagnitudes) {
  torch::manual_seed(0);
  for (const int64_t v : {1, 7, 8, 37, 1000, 32003}) {
    for (const double spread : {1.0, 30.0, 100.0}) {
      const std::string what = "v=" + std::to_string(v) + " spread=" + std::to_string(spread);
      const torch::Tensor logits = (torch::rand({5, v}) * 2 - 1) * spread;
      std::vector<int64_t> targets = {0, v - 1, kIgnore, v / 2, v / 3};
      torch::Tensor loss;
      torch::Tensor grad = torch::full({5, v}, 5.0f);
      RunKernel(logits, targets, loss, grad.data_ptr<float>(), v);
      const Expected want = Reference(logits, targets);
      testing::ExpectCloseToLargest(loss, want.loss, 2e-6, what + " loss");
      testing::ExpectCloseToLargest(grad, want.grad, 2e-6, what + " grad");
      EXPECT_TRUE(torch::equal(grad[2], torch::zeros({v}))) << what;
      EXPECT_EQ(loss[2].item<float>(), 0.0f) << what;
    }
  }
}

TEST(CrossEntropyCpuKernelTest, StridedRowsGradientOverLogitsAndNoGradient) {
  torch::manual_seed(1);
  const torch::Tensor wide = torch::randn({4, 300}) * 4;
  const torch::Tensor logits = wide.narrow(1, 10, 259);  // rows 300 apart
  const std::vector<int64_t> targets = {3, 258, 0, 100};
  const Expected want = Reference(logits, targets);

  torch::Tensor loss_only;
  RunKernel(logits, targets, loss_only, nullptr, 0);
  testing::ExpectCloseToLargest(loss_only, want.loss, 2e-6, "no gradient");

  const torch::Tensor in_place = logits.clone();
  torch::Tensor loss;
  RunKernel(in_place, targets, loss, in_place.data_ptr<float>(), in_place.stride(0));
  testing::ExpectCloseToLargest(loss, want.loss, 2e-6, "gradient over logits: loss");
  testing::ExpectCloseToLargest(in_place, want.grad, 2e-6, "gradient over logits");
}

TEST(CrossEntropyCpuKernelTest, RowsHoldingNanOrInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const float bad : {nan, inf}) {
    for (const int64_t at : {int64_t{3}, int64_t{17}}) {  // in the vector part, in the tail
      torch::Tensor logits = torch::randn({2, 18});
      logits[0][at] = bad;
      torch::Tensor loss;
      torch::Tensor grad = torch::zeros({2, 18});
      RunKernel(logits, {1, 1}, loss, grad.data_ptr<float>(), 18);
      EXPECT_TRUE(std::isnan(loss[0].item<float>())) << bad << " at " << at;
      EXPECT_TRUE(grad[0].isnan().all().item<bool>()) << bad << " at " << at;
      EXPECT_TRUE(std::isfinite(loss[1].item<float>()));
      EXPECT_TRUE(grad[1].isfinite().all().item<bool>());
    }
  }
  torch::Tensor loss;
  torch::Tensor grad = torch::zeros({2, 18});
  const torch::Tensor all_minus_inf = torch::full({2, 18}, -inf);
  RunKernel(all_minus_inf, {1, 1}, loss, grad.data_ptr<float>(), 18);
  EXPECT_TRUE(loss.isnan().all().item<bool>());
  EXPECT_TRUE(grad.isnan().all().item<bool>());

  for (const int64_t at : {int64_t{3}, int64_t{17}}) {
    torch::Tensor logits = torch::randn({2, 18});
    logits[0][at] = -inf;
    RunKernel(logits, {1, 1}, loss, grad.data_ptr<float>(), 18);
    const Expected want = Reference(logits, {1, 1});
    testing::ExpectCloseToLargest(loss, want.loss, 2e-6, "-inf logit: loss");
    testing::ExpectCloseToLargest(grad, want.grad, 2e-6, "-inf logit: grad");
  }
}

}  // namespace
}  // namespace fulcrum::models
