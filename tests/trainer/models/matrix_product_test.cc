// MatrixProduct / MatrixProductInto / AddMatrixProduct against torch::mm in
// fp64: operands transposed, narrowed (a leading dimension wider than the
// matrix) or not readable as matrices (copied); a product written into the
// rows of a larger matrix, whose other rows stay untouched, and over an
// uninitialised (NaN) output that is never read; alpha and accumulation,
// also over sizes split into whole 64s and a rest;
// K = 0; shapes seen again (the cached primitive) and new ones; bf16 through
// torch; batched products over strided leading dims, and the sizes they
// leave to the caller. With oneDNN (Debian's LibTorch) fp32 takes it, and
// the test says so.
#include "trainer/models/matrix_product.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "tests/tensor_compare.h"

namespace fulcrum::models {
namespace {

using testing::ExpectCloseToLargest;

torch::Tensor Reference(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::mm(a.to(torch::kDouble), b.to(torch::kDouble));
}

TEST(MatrixProductTest, SaysWhichPathFp32Takes) {
  std::printf("fp32 CPU matrix products through %s\n",
              MatrixProductUsesOneDnn() ? "oneDNN's matmul" : "torch::mm (no oneDNN found)");
#if FULCRUM_EXPECT_DNNL
  EXPECT_TRUE(MatrixProductUsesOneDnn());
#endif
}

TEST(MatrixProductTest, TransposedNarrowedAndCopiedOperands) {
  torch::manual_seed(0);
  // 128 rows: sizes that are multiples of 64 or below it take oneDNN.
  const torch::Tensor x = torch::randn({128, 48});
  const torch::Tensor w = torch::randn({30, 48});
  struct Case {
    std::string name;
    torch::Tensor a, b;
  };
  const Case cases[] = {
      {"contiguous", x, torch::randn({48, 30})},
      {"b transposed (a linear's x W^T)", x, w.t()},
      {"a transposed (a weight's gradient g^T x)", torch::randn({128, 30}).t(), x},
      {"narrowed in both dims", torch::randn({150, 60}).narrow(0, 5, 128).narrow(1, 3, 48), w.t()},
      {"a neither row nor column contiguous", torch::randn({128, 96}).slice(1, 0, 96, 2), w.t()},
      {"rows an expert receives (70: 64 and 6)", torch::randn({70, 48}), w.t()},
      {"131 rows, 144 columns", torch::randn({131, 48}), torch::randn({144, 48}).t()},
      {"an expert's weight gradient (inner 70)", torch::randn({70, 30}).t(),
       torch::randn({70, 48})},
      {"every size ragged", torch::randn({131, 200}), torch::randn({200, 77})},
      {"rank-16 adapter", x, torch::randn({16, 48}).t()},
      {"one row, one column", torch::randn({1, 48}), torch::randn({48, 1})},
      // A size-1 dim's stride is arbitrary in LibTorch (a decoding step's row).
      {"one row with odd strides", torch::randn({48, 1}).t(), w.t()},
      {"one row of a wider matrix", torch::randn({3, 96}).narrow(0, 1, 1).narrow(1, 0, 48),
       torch::randn({48, 1}).expand({48, 5})},
  };
  for (int round = 0; round < 2; ++round) {  // the second finds the primitives built
    for (const Case& c : cases) {
      ExpectCloseToLargest(MatrixProduct(c.a, c.b), Reference(c.a, c.b), 1e-5, c.name);
    }
  }
}

TEST(MatrixProductTest, IntoRowsOfALargerMatrixAndAccumulated) {
  torch::manual_seed(1);
  const torch::Tensor a = torch::randn({20, 32});
  const torch::Tensor b = torch::randn({24, 32}).t();
  // Into rows 3..23 of a NaN matrix: every product element written, no NaN
  // read; rows outside untouched.
  torch::Tensor big = torch::full({30, 24}, std::numeric_limits<float>::quiet_NaN());
  MatrixProductInto(big.narrow(0, 3, 20), a, b);
  ExpectCloseToLargest(big.narrow(0, 3, 20), Reference(a, b), 1e-5, "into");
  EXPECT_TRUE(big.narrow(0, 0, 3).isnan().all().item<bool>());
  EXPECT_TRUE(big.narrow(0, 23, 7).isnan().all().item<bool>());
  // Into one row whose stride LibTorch left arbitrary.
  const torch::Tensor row = torch::empty({24, 1}).t();
  MatrixProductInto(row, a.narrow(0, 0, 1), b);
  ExpectCloseToLargest(row, Reference(a.narrow(0, 0, 1), b), 1e-5, "one row");

  const torch::Tensor base = torch::randn({20, 24});
  for (const double alpha : {1.0, 2.5, -0.5}) {
    torch::Tensor out = base.clone();
    AddMatrixProduct(out, a, b, alpha);
    ExpectCloseToLargest(out, base.to(torch::kDouble) + alpha * Reference(a, b), 1e-5,
                         "accumulated, alpha " + std::to_string(alpha));
  }
  // Ragged sizes: every part into rows 2..132 of a NaN matrix, and every
  // part accumulated (the inner dimension's rest adds to its head's product).
  const torch::Tensor ragged_a = torch::randn({131, 70}), ragged_b = torch::randn({70, 77});
  torch::Tensor wide = torch::full({140, 77}, std::numeric_limits<float>::quiet_NaN());
  MatrixProductInto(wide.narrow(0, 2, 131), ragged_a, ragged_b);
  ExpectCloseToLargest(wide.narrow(0, 2, 131), Reference(ragged_a, ragged_b), 1e-5, "ragged into");
  EXPECT_TRUE(wide.narrow(0, 0, 2).isnan().all().item<bool>());
  EXPECT_TRUE(wide.narrow(0, 133, 7).isnan().all().item<bool>());
  const torch::Tensor ragged_base = torch::randn({131, 77});
  torch::Tensor sum = ragged_base.clone();
  AddMatrixProduct(sum, ragged_a, ragged_b, -0.5);
  ExpectCloseToLargest(sum, ragged_base.to(torch::kDouble) - 0.5 * Reference(ragged_a, ragged_b),
                       1e-5, "ragged accumulated");
}

TEST(MatrixProductTest, EmptyInnerDimensionAndBf16) {
  const torch::Tensor a = torch::randn({5, 0});
  const torch::Tensor b = torch::randn({0, 4});
  EXPECT_TRUE(torch::equal(MatrixProduct(a, b), torch::zeros({5, 4})));
  torch::Tensor out = torch::ones({5, 4});
  AddMatrixProduct(out, a, b, 3.0);
  EXPECT_TRUE(torch::equal(out, torch::ones({5, 4})));

  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({12, 32}).to(torch::kBFloat16);
  const torch::Tensor w = torch::randn({8, 32}).to(torch::kBFloat16);
  const torch::Tensor y = MatrixProduct(x, w.t());
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  ExpectCloseToLargest(y, Reference(x, w.t()), 2e-2, "bf16");
}

// The pass sizes callers may pick: below 64 as they are, else whole 64s.
torch::Tensor BatchedReference(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::matmul(a.to(torch::kDouble), b.to(torch::kDouble));
}

TEST(MatrixProductTest, BatchedOverStridedLeadingDims) {
  torch::manual_seed(2);
  // The attention's operands: [B, Hkv] leading dims; keys of [B, S, Hkv, D]
  // memory read transposed and narrowed; a product added into the first rows
  // of a larger sum; one batch (the 2-D path).
  const torch::Tensor q = torch::randn({2, 3, 64, 16});
  const torch::Tensor keys = torch::randn({2, 40, 3, 16}).permute({0, 2, 1, 3});  // [2, 3, 40, 16]
  struct Case {
    std::string name;
    torch::Tensor a, b;
    bool taken;
  };
  const Case cases[] = {
      {"scores against strided keys", q, keys.narrow(2, 0, 32).transpose(-1, -2), true},
      {"probabilities times strided values", torch::randn({2, 3, 64, 32}), keys.narrow(2, 0, 32),
       true},
      {"a transposed", torch::randn({2, 3, 32, 64}).transpose(-1, -2), keys.narrow(2, 0, 32), true},
      {"one batch", torch::randn({1, 1, 64, 16}), torch::randn({1, 1, 16, 8}), true},
      {"70 keys (not a size a step repeats)", q, torch::randn({2, 3, 16, 70}), false},
      {"rows of 70", torch::randn({2, 3, 70, 16}), torch::randn({2, 3, 16, 8}), false},
  };
  for (int round = 0; round < 2; ++round) {
    for (const Case& c : cases) {
      std::vector<int64_t> sizes = c.a.sizes().vec();
      sizes.back() = c.b.size(-1);
      torch::Tensor out = torch::full(sizes, std::numeric_limits<float>::quiet_NaN());
      const bool taken = BatchedMatrixProductInto(out, c.a, c.b, /*accumulate=*/false);
      if (!MatrixProductUsesOneDnn()) {
        EXPECT_FALSE(taken) << c.name;
        continue;
      }
      EXPECT_EQ(taken, c.taken) << c.name;
      if (!taken) {
        EXPECT_TRUE(out.isnan().all().item<bool>()) << c.name << ": nothing written";
        continue;
      }
      ExpectCloseToLargest(out, BatchedReference(c.a, c.b), 1e-5, c.name);
    }
  }
  // Added into the first 32 rows of each [48, 16] matrix of a sum.
  const torch::Tensor a = torch::randn({2, 3, 32, 64}), b = torch::randn({2, 3, 64, 16});
  torch::Tensor sum = torch::randn({2, 3, 48, 16});
  const torch::Tensor before = sum.clone();
  if (BatchedMatrixProductInto(sum.narrow(2, 0, 32), a, b, /*accumulate=*/true)) {
    ExpectCloseToLargest(sum.narrow(2, 0, 32),
                         before.narrow(2, 0, 32).to(torch::kDouble) + BatchedReference(a, b), 1e-5,
                         "accumulated");
    EXPECT_TRUE(torch::equal(sum.narrow(2, 32, 16), before.narrow(2, 32, 16)));
  } else {
    EXPECT_FALSE(MatrixProductUsesOneDnn());
  }
}

TEST(MatrixProductTest, RepeatingSizeAtMostRoundsDownTo64s) {
  EXPECT_EQ(RepeatingSizeAtMost(0), 1);
  EXPECT_EQ(RepeatingSizeAtMost(40), 40);
  EXPECT_EQ(RepeatingSizeAtMost(64), 64);
  EXPECT_EQ(RepeatingSizeAtMost(131), 128);
  EXPECT_EQ(RepeatingSizeAtMost(1048), 1024);
}

TEST(MatrixProductDeathTest, MismatchedSizesAreABrokenInvariant) {
  EXPECT_DEATH(MatrixProduct(torch::randn({3, 4}), torch::randn({5, 2})), "matrix product of");
  torch::Tensor out = torch::zeros({3, 3});
  EXPECT_DEATH(AddMatrixProduct(out, torch::randn({3, 4}), torch::randn({4, 2})),
               "matrix product into");
}

}  // namespace
}  // namespace fulcrum::models
