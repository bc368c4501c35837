// BatchedMatmul(Out) against torch::matmul in fp64: operands transposed,
// narrowed (a leading dimension wider than the matrix), expanded over a
// batch dim (stride 0) or not readable as matrices (copied); products written
// into and added onto a strided view, whose other elements stay untouched,
// and an uninitialised (NaN) output never read; K = 0; bf16 and a wider
// output through torch. With oneDNN (Debian's LibTorch) fp32 takes it, and
// the test says so.
#include "trainer/models/batched_matmul.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <string>

#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

using testing::ExpectCloseToLargest;

torch::Tensor Reference(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::matmul(a.to(torch::kDouble), b.to(torch::kDouble));
}

TEST(BatchedMatmulTest, SaysWhichPathFp32Takes) {
  std::printf("fp32 CPU products through %s\n",
              BatchedMatmulUsesOneDnn() ? "oneDNN's sgemm" : "torch::matmul (no oneDNN found)");
#if FULCRUM_EXPECT_DNNL
  EXPECT_TRUE(BatchedMatmulUsesOneDnn());
#endif
}

TEST(BatchedMatmulTest, ContiguousTransposedNarrowedAndExpandedOperands) {
  torch::manual_seed(0);
  const torch::Tensor q = torch::randn({2, 3, 40, 16});
  const torch::Tensor k = torch::randn({2, 3, 50, 16});
  const torch::Tensor keys = k.narrow(2, 0, 37);  // rows of a wider matrix
  struct Case {
    std::string name;
    torch::Tensor a, b;
  };
  const Case cases[] = {
      {"contiguous", q, torch::randn({2, 3, 16, 24})},
      {"b transposed, narrowed", q, keys.transpose(-1, -2)},
      {"a transposed", torch::randn({2, 3, 16, 40}).transpose(-1, -2), keys.transpose(-1, -2)},
      {"a narrowed in both dims", torch::randn({2, 3, 60, 20}).narrow(2, 5, 40).narrow(3, 2, 16),
       torch::randn({2, 3, 16, 8})},
      {"b expanded over a batch dim", q, torch::randn({2, 1, 16, 8}).expand({2, 3, 16, 8})},
      {"a neither row nor column contiguous", torch::randn({2, 3, 40, 32}).slice(3, 0, 32, 2),
       torch::randn({2, 3, 16, 8})},
      {"one matrix", torch::randn({40, 16}), torch::randn({16, 9})},
      {"one row, one column", torch::randn({4, 1, 16}), torch::randn({4, 16, 1})},
  };
  for (const Case& c : cases) {
    ExpectCloseToLargest(BatchedMatmul(c.a, c.b), Reference(c.a, c.b), 1e-5, c.name);
  }
}

TEST(BatchedMatmulTest, WritesAndAddsIntoAStridedViewOnly) {
  torch::manual_seed(1);
  const torch::Tensor a = torch::randn({2, 2, 24, 16}), b = torch::randn({2, 2, 16, 8});
  const torch::Tensor product = Reference(a, b);
  for (const bool accumulate : {false, true}) {
    const torch::Tensor base = torch::randn({2, 2, 30, 8});
    torch::Tensor whole = base.clone();
    BatchedMatmulOut(whole.narrow(2, 3, 24), a, b, accumulate);
    torch::Tensor want = base.to(torch::kDouble);
    if (accumulate) {
      want.narrow(2, 3, 24).add_(product);
    } else {
      want.narrow(2, 3, 24).copy_(product);
    }
    ExpectCloseToLargest(whole, want, 1e-5, accumulate ? "added" : "written");
    EXPECT_TRUE(torch::equal(whole.narrow(2, 0, 3), base.narrow(2, 0, 3)));
    EXPECT_TRUE(torch::equal(whole.narrow(2, 27, 3), base.narrow(2, 27, 3)));
  }
  // A written output is not read: NaNs in it do not reach the product.
  torch::Tensor nans = torch::full({2, 2, 24, 8}, std::numeric_limits<float>::quiet_NaN());
  BatchedMatmulOut(nans, a, b, /*accumulate=*/false);
  ExpectCloseToLargest(nans, product, 1e-5, "over NaNs");
  // An output whose rows are not unit-stride goes through a buffer.
  torch::Tensor columns = torch::ones({2, 2, 8, 24});
  BatchedMatmulOut(columns.transpose(-1, -2), a, b, /*accumulate=*/true);
  ExpectCloseToLargest(columns.transpose(-1, -2), product + 1, 1e-5, "transposed output");
}

TEST(BatchedMatmulTest, EmptyInnerDimensionAndOtherDtypes) {
  torch::Tensor out = torch::full({3, 4, 5}, 7.0f);
  BatchedMatmulOut(out, torch::randn({3, 4, 0}), torch::randn({3, 0, 5}), /*accumulate=*/true);
  EXPECT_TRUE(torch::equal(out, torch::full({3, 4, 5}, 7.0f)));
  BatchedMatmulOut(out, torch::randn({3, 4, 0}), torch::randn({3, 0, 5}), /*accumulate=*/false);
  EXPECT_TRUE(torch::equal(out, torch::zeros({3, 4, 5})));

  torch::manual_seed(2);
  const torch::Tensor a = torch::randn({3, 12, 16}), b = torch::randn({3, 16, 10});
  const torch::Tensor a16 = a.to(torch::kBFloat16), b16 = b.to(torch::kBFloat16);
  const torch::Tensor product16 = BatchedMatmul(a16, b16);
  EXPECT_EQ(product16.scalar_type(), torch::kBFloat16);
  ExpectCloseToLargest(product16, torch::matmul(a16, b16), 0.0, "bf16 as torch::matmul");
  // An fp32 sum of bf16 products.
  torch::Tensor sum = torch::zeros({3, 12, 10});
  BatchedMatmulOut(sum, a16, b16, /*accumulate=*/true);
  BatchedMatmulOut(sum, a16, b16, /*accumulate=*/true);
  ExpectCloseToLargest(sum, torch::matmul(a16, b16).to(torch::kFloat) * 2, 1e-6, "fp32 of bf16");
}

}  // namespace
}  // namespace fulcrum::models
