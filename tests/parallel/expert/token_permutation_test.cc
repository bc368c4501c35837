#include "parallel/expert/token_permutation.h"

#include <gtest/gtest.h>

#include <vector>

namespace fulcrum::parallel::expert {
namespace {

torch::Tensor Ids(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return torch::tensor(flat, torch::kInt64)
      .view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
}

std::vector<int64_t> ToVector(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(TokenPermutationTest, RowsAreGroupedByExpertInStableOrder) {
  // 4 tokens, k = 2, 5 experts; expert 1 and 4 get no token.
  const torch::Tensor ids = Ids({{2, 0}, {0, 3}, {3, 2}, {0, 2}});
  const torch::Tensor hidden = torch::arange(8, torch::kFloat32).view({4, 2});
  const torch::Tensor weights = torch::full({4, 2}, 0.5);
  const PermutedTokens p = PermuteByExpert(hidden, ids, weights, 5);

  EXPECT_EQ(p.num_tokens, 4);
  EXPECT_EQ(p.tokens_per_expert, (std::vector<int64_t>{3, 0, 3, 2, 0}));
  // expert 0: tokens 0, 1, 3; expert 2: tokens 0, 2, 3; expert 3: tokens 1, 2.
  EXPECT_EQ(ToVector(p.source_rows), (std::vector<int64_t>{0, 1, 3, 0, 2, 3, 1, 2}));
  EXPECT_TRUE(torch::equal(p.tokens, hidden.index_select(0, p.source_rows)));
  EXPECT_EQ(p.weights.sizes(), torch::IntArrayRef({8}));
}

TEST(TokenPermutationTest, StableWithinAnExpertWhenATokenChoosesItTwice) {
  // A token may list an expert twice only in tests, but the order must still
  // be (token, choice): token 0's two rows, then token 1's.
  const torch::Tensor ids = Ids({{1, 1}, {1, 0}});
  const torch::Tensor hidden = torch::tensor({{1.0f}, {2.0f}});
  const torch::Tensor weights = torch::tensor({{0.1f, 0.2f}, {0.3f, 0.4f}});
  const PermutedTokens p = PermuteByExpert(hidden, ids, weights, 2);
  EXPECT_EQ(ToVector(p.source_rows), (std::vector<int64_t>{1, 0, 0, 1}));
  EXPECT_TRUE(torch::allclose(p.weights, torch::tensor({0.4f, 0.1f, 0.2f, 0.3f})));
}

TEST(TokenPermutationTest, DroppedChoicesGetNoRowAndAddNothing) {
  // Expert id -1: a choice dropped over capacity.
  const torch::Tensor ids = Ids({{0, -1}, {1, 0}, {-1, -1}});
  const torch::Tensor hidden = torch::tensor({{1.0f}, {2.0f}, {3.0f}});
  const torch::Tensor weights = torch::tensor({{0.5f, 0.5f}, {0.25f, 0.75f}, {0.5f, 0.5f}});
  const PermutedTokens p = PermuteByExpert(hidden, ids, weights, 2);
  EXPECT_EQ(p.dropped, 3);
  EXPECT_EQ(p.tokens_per_expert, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(ToVector(p.source_rows), (std::vector<int64_t>{0, 1, 1}));
  EXPECT_TRUE(torch::allclose(p.weights, torch::tensor({0.5f, 0.75f, 0.25f})));
  // Identity experts: each token gets the weights of its kept choices only.
  const torch::Tensor back = UnpermuteAndCombine(p.tokens, p);
  EXPECT_TRUE(torch::allclose(back, torch::tensor({{0.5f}, {2.0f}, {0.0f}})));
}

TEST(TokenPermutationTest, UnitWeightsAndIdentityExpertsGiveKTimesX) {
  torch::manual_seed(3);
  const int64_t n = 7, k = 3, e = 6;
  const torch::Tensor hidden = torch::randn({n, 4});
  const torch::Tensor ids =
      torch::stack({torch::full({n}, 1, torch::kInt64), torch::randint(2, 4, {n}, torch::kInt64),
                    torch::randint(4, 6, {n}, torch::kInt64)},
                   1);
  const PermutedTokens p = PermuteByExpert(hidden, ids, torch::ones({n, k}), e);
  const torch::Tensor back = UnpermuteAndCombine(p.tokens, p);
  EXPECT_TRUE(torch::allclose(back, hidden * static_cast<double>(k), 1e-6, 1e-6));
  EXPECT_EQ(p.tokens_per_expert[0], 0);
  EXPECT_EQ(p.tokens_per_expert[1], n);
  int64_t total = 0;
  for (int64_t c : p.tokens_per_expert) total += c;
  EXPECT_EQ(total, n * k);
}

TEST(TokenPermutationTest, WeightsAreCastToHiddenDtype) {
  const torch::Tensor hidden = torch::ones({2, 3}, torch::kFloat64);
  const PermutedTokens p =
      PermuteByExpert(hidden, Ids({{0}, {1}}), torch::ones({2, 1}, torch::kFloat32), 2);
  EXPECT_EQ(p.weights.scalar_type(), torch::kFloat64);
  EXPECT_EQ(UnpermuteAndCombine(p.tokens, p).scalar_type(), torch::kFloat64);
}

TEST(TokenPermutationTest, AllTokensOnOneExpertLeaveOthersEmpty) {
  const torch::Tensor hidden = torch::randn({3, 2});
  const PermutedTokens p = PermuteByExpert(hidden, Ids({{2}, {2}, {2}}), torch::ones({3, 1}), 4);
  EXPECT_EQ(p.tokens_per_expert, (std::vector<int64_t>{0, 0, 3, 0}));
  EXPECT_TRUE(torch::equal(p.tokens, hidden));
}

TEST(TokenPermutationTest, NoTokensGiveEmptyRowsAndZeroCounts) {
  // An expert-parallel rank may receive no token at all.
  const torch::Tensor hidden = torch::zeros({0, 4});
  const PermutedTokens p =
      PermuteByExpert(hidden, torch::zeros({0, 2}, torch::kInt64), torch::zeros({0, 2}), 3);
  EXPECT_EQ(p.tokens.sizes(), torch::IntArrayRef({0, 4}));
  EXPECT_EQ(p.tokens_per_expert, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(UnpermuteAndCombine(p.tokens, p).sizes(), torch::IntArrayRef({0, 4}));
}

TEST(TokenPermutationTest, GradientsMatchANaiveReference) {
  torch::manual_seed(11);
  const int64_t n = 5, k = 2, e = 4, h = 3;
  const torch::Tensor ids = Ids({{0, 3}, {3, 1}, {1, 0}, {3, 0}, {1, 3}});
  const torch::Tensor x0 = torch::randn({n, h}, torch::kFloat64);
  const torch::Tensor w0 = torch::rand({n, k}, torch::kFloat64);
  // A different linear "expert" per expert id, so the order matters.
  const torch::Tensor mats = torch::randn({e, h, h}, torch::kFloat64);
  const torch::Tensor probe = torch::randn({n, h}, torch::kFloat64);

  // Permuted path.
  const torch::Tensor x1 = x0.clone().requires_grad_(true);
  const torch::Tensor w1 = w0.clone().requires_grad_(true);
  const PermutedTokens p = PermuteByExpert(x1, ids, w1, e);
  std::vector<torch::Tensor> outs;
  int64_t offset = 0;
  for (int64_t ex = 0; ex < e; ++ex) {
    const int64_t rows = p.tokens_per_expert[ex];
    outs.push_back(torch::matmul(p.tokens.narrow(0, offset, rows), mats[ex]));
    offset += rows;
  }
  const torch::Tensor y1 = UnpermuteAndCombine(torch::cat(outs), p);
  (y1 * probe).sum().backward();

  // Naive path: per token, per choice.
  const torch::Tensor x2 = x0.clone().requires_grad_(true);
  const torch::Tensor w2 = w0.clone().requires_grad_(true);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < n; ++t) {
    torch::Tensor acc = torch::zeros({h}, torch::kFloat64);
    for (int64_t c = 0; c < k; ++c) {
      acc = acc + w2[t][c] * torch::matmul(x2[t], mats[ids[t][c].item<int64_t>()]);
    }
    rows.push_back(acc);
  }
  const torch::Tensor y2 = torch::stack(rows);
  (y2 * probe).sum().backward();

  EXPECT_TRUE(torch::allclose(y1, y2, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-12, 1e-12));
  EXPECT_GT(w1.grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace fulcrum::parallel::expert
