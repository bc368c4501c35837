// ConcurrentBranch off CUDA: the computation runs inline, in the
// constructor, and autograd flows through the joined result as through the
// plain expression. (Its side stream on CUDA is checked in
// tests/cuda/cuda_parity_test.cc, which runs where a GPU is.)
#include "trainer/models/concurrent_branch.h"

#include <gtest/gtest.h>

namespace fulcrum::models {
namespace {

TEST(ConcurrentBranchTest, RunsInlineInTheConstructorOnTheCpu) {
  int runs = 0;
  const torch::Tensor x = torch::arange(6, torch::kFloat).view({2, 3});
  ConcurrentBranch branch({x}, [&] {
    ++runs;
    return x * 2;
  });
  EXPECT_EQ(runs, 1) << "the computation must have run before Join on the CPU";
  EXPECT_FALSE(branch.on_side_stream());
  const torch::Tensor y = branch.Join();
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(torch::equal(y, x * 2));
}

TEST(ConcurrentBranchTest, GradientsFlowThroughTheJoinedResult) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({4, 4}, torch::requires_grad());
  const torch::Tensor x = torch::randn({3, 4}, torch::requires_grad());
  const torch::Tensor routed = torch::tanh(x.matmul(w));

  ConcurrentBranch branch({x}, [&] { return torch::relu(x.matmul(w.t())); });
  const torch::Tensor with_branch = (routed + branch.Join()).pow(2).sum();
  // The routed part is shared with the plain expression below.
  const auto grads = torch::autograd::grad({with_branch}, {x, w}, {}, /*retain_graph=*/true);

  const torch::Tensor plain = (routed + torch::relu(x.matmul(w.t()))).pow(2).sum();
  const auto want = torch::autograd::grad({plain}, {x, w});
  EXPECT_TRUE(torch::equal(with_branch, plain));
  EXPECT_TRUE(torch::equal(grads[0], want[0]));
  EXPECT_TRUE(torch::equal(grads[1], want[1]));
}

TEST(ConcurrentBranchTest, AnUndefinedResultIsAllowed) {
  // A branch that produces nothing (e.g. a block without a shared expert
  // written generically) joins to an undefined tensor.
  ConcurrentBranch branch({}, [] { return torch::Tensor(); });
  EXPECT_FALSE(branch.Join().defined());
}

}  // namespace
}  // namespace fulcrum::models
