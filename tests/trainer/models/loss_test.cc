// The chunked cross entropy (models/loss.cc) against log_softmax + nll_loss
// over the shifted targets: the same loss and logits gradient in fp32 and
// bf16, across chunk boundaries, with ignored targets, without autograd, and
// with a -inf logit under an ignored target.
#include "trainer/models/loss.h"

#include <gtest/gtest.h>

#include <limits>

#include "tests/tensor_bytes.h"
#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

// Reference sum and gradient (d sum / d logits), computed in fp32.
struct Reference {
  double loss;
  torch::Tensor grad;
};

Reference ReferenceOf(const torch::Tensor& logits, const torch::Tensor& labels) {
  torch::Tensor x = logits.detach().to(torch::kFloat).requires_grad_(true);
  const int64_t t = x.size(1), v = x.size(2);
  const torch::Tensor loss = torch::nll_loss(
      torch::log_softmax(x.narrow(1, 0, t - 1).reshape({-1, v}), 1),
      labels.narrow(1, 1, t - 1).reshape({-1}), {}, at::Reduction::Sum, kIgnoreIndex);
  loss.backward();
  return {loss.item<double>(), x.grad()};
}

// Batch 3 (or `batch`) x 13 positions, so that the [39, V] rows span several
// chunks when V is large (a chunk holds 1 MiB of fp32 rows) and end in a
// partial one.
torch::Tensor Labels(int64_t v, int64_t batch = 3) {
  torch::Tensor labels = torch::randint(0, v, {batch, 13}, torch::kLong);
  labels.index_put_({0, 5}, kIgnoreIndex);
  labels.index_put_({1, torch::indexing::Slice(0, 8)}, kIgnoreIndex);  // a masked prompt
  labels.index_put_({2, 12}, kIgnoreIndex);
  return labels;
}

TEST(ChunkedCrossEntropyTest, MatchesLogSoftmaxNllLossInFp32AcrossChunks) {
  for (const int64_t v : {7, 50000}) {  // one chunk; 5 rows per chunk
    SCOPED_TRACE(v);
    torch::manual_seed(1);
    const torch::Tensor labels = Labels(v);
    const torch::Tensor logits = (3 * torch::randn({3, 13, v})).requires_grad_(true);
    const Reference ref = ReferenceOf(logits, labels);
    const torch::Tensor loss = CrossEntropySum(logits, labels);
    EXPECT_EQ(loss.dim(), 0);
    EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * ref.loss);
    (loss * 0.5).backward();  // the upstream gradient scales the saved one
    EXPECT_TRUE(torch::allclose(logits.grad(), ref.grad * 0.5, 1e-5, 1e-7));
    // Positions whose next label is ignored, and every sequence's last one,
    // get no gradient at all.
    EXPECT_TRUE(torch::equal(logits.grad()[0][4], torch::zeros({v})));
    EXPECT_TRUE(torch::equal(logits.grad()[1][3], torch::zeros({v})));
    EXPECT_TRUE(torch::equal(logits.grad()[2][12], torch::zeros({v})));
    EXPECT_NEAR(CausalLmLoss(logits, labels).item<double>(), ref.loss / 27,
                1e-5);  // 36 shifted, 9 ignored
  }
}

TEST(ChunkedCrossEntropyTest, Bf16LogitsGetABf16GradientOfTheFp32Loss) {
  torch::manual_seed(2);
  const int64_t v = 40000;
  const torch::Tensor labels = Labels(v);
  const torch::Tensor logits = (3 * torch::randn({3, 13, v})).to(torch::kBFloat16);
  const torch::Tensor leaf = logits.clone().requires_grad_(true);
  const Reference ref = ReferenceOf(logits, labels);  // of the same bf16 values, in fp32
  const torch::Tensor loss = CrossEntropySum(leaf, labels);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * ref.loss);
  loss.backward();
  ASSERT_EQ(leaf.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(leaf.grad().to(torch::kFloat), ref.grad, 1e-2, 1e-4));
}

TEST(ChunkedCrossEntropyTest, WithoutAutogradTheLossIsTheSame) {
  torch::manual_seed(3);
  const torch::Tensor labels = Labels(50000);
  const torch::Tensor logits = torch::randn({3, 13, 50000});
  const Reference ref = ReferenceOf(logits, labels);
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = CrossEntropySum(logits.requires_grad_(true), labels);
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * ref.loss);
}

TEST(ChunkedCrossEntropyTest, AMinusInfinityLogitUnderAnIgnoredTargetStaysFinite) {
  torch::Tensor logits = torch::randn({1, 3, 5});
  logits.index_put_({0, 0, 0}, -std::numeric_limits<float>::infinity());
  const torch::Tensor labels = torch::tensor({int64_t{0}, kIgnoreIndex, int64_t{2}}).view({1, 3});
  logits.requires_grad_(true);
  const torch::Tensor loss = CrossEntropySum(logits, labels);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  EXPECT_TRUE(logits.grad().isfinite().all().item<bool>());
  EXPECT_NEAR(loss.item<double>(), -torch::log_softmax(logits[0][1], 0)[2].item<double>(), 1e-6);
}

TEST(ChunkedCrossEntropyTest, ASecondBackwardThroughOneForwardIsRefused) {
  const torch::Tensor logits = torch::randn({1, 3, 5}).requires_grad_(true);
  const torch::Tensor loss =
      CrossEntropySum(logits, torch::tensor({int64_t{1}, int64_t{2}, int64_t{3}}).view({1, 3}));
  loss.backward({}, /*retain_graph=*/true);
  EXPECT_DEATH(loss.backward(), "backward ran twice");
}

// LinearCrossEntropySum against CrossEntropySum of the materialised logits.
struct HeadCase {
  const char* name;
  torch::ScalarType dtype;
  bool weight_trains;
  int64_t batch, vocab;
};

TEST(LinearCrossEntropyTest, MatchesTheLossOfTheMaterialisedLogits) {
  const int64_t h = 8;
  // vocab 300000 on the CPU: a frozen head's chunks take 13 rows, so 39
  // rows span 3; a trained head's 64 (111 rounded down), so 117 rows span 2.
  for (const HeadCase& c : {HeadCase{"fp32, one chunk", torch::kFloat, true, 3, 1000},
                            HeadCase{"fp32, chunks", torch::kFloat, true, 9, 300000},
                            HeadCase{"fp32, frozen head", torch::kFloat, false, 3, 300000},
                            HeadCase{"bf16, chunks", torch::kBFloat16, true, 9, 300000}}) {
    SCOPED_TRACE(c.name);
    ASSERT_LT(HeadChunkRows(c.batch * 13, c.vocab, /*cuda=*/false, c.weight_trains),
              c.vocab > 1000 ? c.batch * 13 : c.batch * 13 + 1);
    torch::manual_seed(4);
    const torch::Tensor labels = Labels(c.vocab, c.batch);
    const torch::Tensor hidden0 = torch::randn({c.batch, 13, h}).to(c.dtype);
    const torch::Tensor weight0 = torch::randn({c.vocab, h}).to(c.dtype);
    const torch::Tensor h1 = hidden0.clone().requires_grad_(true);
    const torch::Tensor w1 = weight0.clone().requires_grad_(c.weight_trains);
    const torch::Tensor h2 = hidden0.clone().requires_grad_(true);
    const torch::Tensor w2 = weight0.clone().requires_grad_(c.weight_trains);

    const torch::Tensor expected =
        CrossEntropySum(torch::nn::functional::linear(h1, w1).to(torch::kFloat), labels);
    const torch::Tensor got = LinearCrossEntropySum(h2, w2, labels);
    ASSERT_EQ(got.scalar_type(), torch::kFloat);
    const double tol = c.dtype == torch::kFloat ? 1e-5 : 1e-2;
    EXPECT_NEAR(got.item<double>(), expected.item<double>(), tol * expected.item<double>());
    (expected * 0.25).backward();
    (got * 0.25).backward();  // the upstream gradient scales the kept ones
    ASSERT_EQ(h2.grad().scalar_type(), c.dtype);
    // Against the largest element: the products sum 300000 terms in another
    // order (oneDNN's, models/matrix_product.h) than the reference's mm.
    testing::ExpectCloseToLargest(h2.grad(), h1.grad(), tol, "hidden's gradient");
    if (c.weight_trains) {
      ASSERT_EQ(w2.grad().scalar_type(), c.dtype);
      testing::ExpectCloseToLargest(w2.grad(), w1.grad(), tol, "weight's gradient");
    } else {
      EXPECT_FALSE(w2.grad().defined());
    }
    torch::NoGradGuard no_grad;
    EXPECT_NEAR(LinearCrossEntropySum(h2, w2, labels).item<double>(), got.item<double>(),
                1e-6 * got.item<double>());
  }
}

// Passes of whole multiples of 64 rows, which MatrixProduct sends through
// oneDNN (other sizes take torch::mm, at half its FLOP/s on the bench host):
// the ~290M bench Llama's 1024 rows of vocab 32000 in 4 passes of 256
// (32 MiB: 262 rows), the 55M's 2048 in 2 of 1024 (128 MiB: 1048).
TEST(LinearCrossEntropyTest, PassesTakeWholeMultiplesOf64Rows) {
  EXPECT_EQ(HeadChunkRows(1024, 32000, /*cuda=*/false, /*weight_trains=*/false), 256);
  EXPECT_EQ(HeadChunkRows(2048, 32000, /*cuda=*/false, /*weight_trains=*/true), 1024);
  EXPECT_EQ(HeadChunkRows(40, 32000, /*cuda=*/false, /*weight_trains=*/false), 40);
  EXPECT_EQ(HeadChunkRows(1024, 1 << 19, /*cuda=*/false, /*weight_trains=*/false), 16);
}

TEST(LinearCrossEntropyTest, NeverHoldsTheLogitsOfAllRows) {
  const int64_t b = 16, t = 64, h = 8, v = 100000;  // 320 of 1024 rows per chunk
  torch::manual_seed(5);
  const torch::Tensor labels = torch::randint(0, v, {b, t}, torch::kLong);
  const torch::Tensor hidden = torch::randn({b, t, h}, torch::requires_grad());
  const torch::Tensor weight = torch::randn({v, h}, torch::requires_grad());
  const int64_t rows = HeadChunkRows(b * t, v, /*cuda=*/false, /*weight_trains=*/true);
  ASSERT_LT(rows, b * t);
  EXPECT_LT(HeadChunkRows(b * t, v, /*cuda=*/false, /*weight_trains=*/false), rows);
  const int64_t peak =
      testing::PeakTensorBytes([&] { LinearCrossEntropySum(hidden, weight, labels).backward(); });
  // A chunk's logits and their gradient, the hidden states' and the weight's
  // gradients (and small change); the materialised path needs 2 x [N, V].
  const int64_t fused = (2 * rows * v + b * t * h + v * h) * 4;
  EXPECT_LT(peak, fused + fused / 4);
  EXPECT_LT(peak, b * t * v * 4);
}

}  // namespace
}  // namespace fulcrum::models
