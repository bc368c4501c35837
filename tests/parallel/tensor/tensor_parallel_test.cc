// Shard arithmetic and the one-rank (no tp group) behaviour of the parallel
// layers: without a group they are the plain torch computations.
#include "parallel/tensor/tensor_parallel.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "parallel/tensor/parallel_layers.h"
#include "parallel/tensor/partial_gradients.h"
#include "parallel/tensor/vocab_parallel_cross_entropy.h"

namespace fulcrum::parallel::tensor {
namespace {

TEST(EvenShardTest, SplitsEvenlyInRankOrder) {
  for (int rank = 0; rank < 3; ++rank) {
    const ShardRange s = EvenShard(12, rank, 3);
    EXPECT_EQ(s.start, 4 * rank);
    EXPECT_EQ(s.length, 4);
  }
  const ShardRange whole = EvenShard(7, 0, 1);
  EXPECT_EQ(whole.start, 0);
  EXPECT_EQ(whole.length, 7);
}

TEST(EvenShardDeathTest, IndivisibleSizeIsABug) {
  EXPECT_DEATH(EvenShard(10, 0, 3), "does not split evenly over 3 ranks");
  EXPECT_DEATH(EvenShard(12, 3, 3), "rank 3 of size 3");
}

TEST(TensorParallelTest, NoGroupMeansOneRank) {
  const TensorParallel tp;
  EXPECT_EQ(tp.size(), 1);
  EXPECT_EQ(tp.rank(), 0);
  EXPECT_FALSE(tp.active());
  const torch::Tensor x = torch::randn({2, 3, 4});
  EXPECT_TRUE(ColumnParallelInput(x, tp).is_same(x));
  EXPECT_TRUE(RowParallelOutput(x, tp).is_same(x));
}

TEST(ParallelLayersOneRankTest, LinearsEqualTorchLinear) {
  torch::manual_seed(0);
  const TensorParallel tp;
  ColumnParallelLinear column(4, 6, /*bias=*/true, /*gather_output=*/true, tp, torch::kFloat);
  RowParallelLinear row(6, 4, /*bias=*/false, tp, torch::kFloat);
  EXPECT_EQ(column->weight.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(row->weight.sizes(), (std::vector<int64_t>{4, 6}));
  EXPECT_FALSE(row->bias.defined());
  // HF names: the module's parameters are "weight" and "bias".
  EXPECT_NE(column->named_parameters().find("weight"), nullptr);
  EXPECT_NE(column->named_parameters().find("bias"), nullptr);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : column->parameters()) p.normal_();
    for (auto& p : row->parameters()) p.normal_();
  }
  const torch::Tensor x = torch::randn({2, 3, 4});
  const torch::Tensor expected =
      torch::linear(torch::linear(x, column->weight, column->bias), row->weight);
  EXPECT_TRUE(torch::allclose(row(column(x)), expected));
}

TEST(ParallelLayersOneRankTest, EmbeddingAndCrossEntropyEqualTorch) {
  torch::manual_seed(0);
  const TensorParallel tp;
  VocabParallelEmbedding embedding(5, 3, tp, torch::kFloat);
  EXPECT_EQ(embedding->vocab_start(), 0);
  {
    torch::NoGradGuard no_grad;
    embedding->weight.normal_();
  }
  const torch::Tensor ids = torch::tensor({0, 4, 2, 2}, torch::kLong).reshape({2, 2});
  EXPECT_TRUE(torch::equal(embedding(ids), torch::embedding(embedding->weight, ids)));

  const torch::Tensor logits = torch::randn({2, 4, 5}, torch::requires_grad());
  const torch::Tensor labels = torch::tensor({1, 2, -100, 4, 0, 3, 3, -100}).reshape({2, 4});
  const torch::Tensor expected = torch::nn::functional::cross_entropy(
      logits.narrow(1, 0, 3).reshape({-1, 5}), labels.narrow(1, 1, 3).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  const torch::Tensor loss = VocabParallelCrossEntropySum(logits, labels, 0, tp);
  EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-5);
  const torch::Tensor grad = torch::autograd::grad({loss}, {logits})[0];
  const torch::Tensor expected_grad = torch::autograd::grad({expected}, {logits})[0];
  EXPECT_TRUE(torch::allclose(grad, expected_grad, 1e-5, 1e-6));
}

TEST(ParallelLayersOneRankTest, CrossEntropyOfOnePositionHasNoTargets) {
  const torch::Tensor logits = torch::randn({2, 1, 5}, torch::requires_grad());
  const torch::Tensor loss =
      VocabParallelCrossEntropySum(logits, torch::zeros({2, 1}, torch::kLong), 0, TensorParallel());
  EXPECT_EQ(loss.item<float>(), 0.0f);
  EXPECT_EQ(loss.dim(), 0);
}

TEST(ParallelLayersDeathTest, MismatchedLogitsAndLabelsIsABug) {
  const torch::Tensor logits = torch::randn({2, 4, 5});
  EXPECT_DEATH(
      VocabParallelCrossEntropySum(logits, torch::zeros({2, 3}, torch::kLong), 0, TensorParallel()),
      "need \\[B, T, V/tp\\] and \\[B, T\\]");
}

}  // namespace
}  // namespace fulcrum::parallel::tensor
