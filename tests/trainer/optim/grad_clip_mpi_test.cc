// ClipGradNormDistributed under mpirun (2, 3, 4 ranks): the norm over ranks
// equals ClipGradNorm of the concatenation of every rank's counted tensors,
// and every rank scales by the same factor.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/parallel/data_parallel/test_communicators.h"
#include "trainer/optim/grad_clip.h"

namespace fulcrum::optim {
namespace {

using parallel::testing::MakeWorldCommunicator;
using parallel::testing::WorldRank;
using parallel::testing::WorldSize;

// Rank r's gradient pieces: [r + 2] and [2, 3].
std::vector<torch::Tensor> GradsOf(int rank) {
  torch::manual_seed(50 + rank);
  return {torch::randn({rank + 2}), torch::randn({2, 3})};
}

TEST(GradClipMpiTest, EqualsClipGradNormOfTheConcatenation) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  const int n = WorldSize();
  for (double max_norm : {0.5, 1e6, 0.0}) {
    SCOPED_TRACE(max_norm);
    // Reference on one tensor holding every rank's pieces.
    std::vector<torch::Tensor> pieces;
    for (int r = 0; r < n; ++r) {
      for (const torch::Tensor& g : GradsOf(r)) pieces.push_back(g.reshape({-1}));
    }
    torch::Tensor all = torch::zeros({torch::cat(pieces).numel()}).requires_grad_(true);
    all.mutable_grad() = torch::cat(pieces);
    const torch::Tensor ref_norm = ClipGradNorm({all}, max_norm);
    const double factor =
        max_norm > 0 ? std::min(1.0, max_norm / (ref_norm.item<double>() + 1e-6)) : 1.0;

    std::vector<torch::Tensor> mine = GradsOf(rank);
    std::vector<torch::Tensor> original;
    for (const torch::Tensor& g : mine) original.push_back(g.clone());
    torch::Tensor extra = torch::ones({4});  // scaled, not counted
    std::vector<torch::Tensor> to_scale = mine;
    to_scale.push_back(extra);
    const torch::Tensor norm = ClipGradNormDistributed(mine, to_scale, max_norm, {comm.get()});
    EXPECT_EQ(norm.dim(), 0);
    EXPECT_EQ(norm.scalar_type(), torch::kFloat);
    EXPECT_NEAR(norm.item<double>(), ref_norm.item<double>(), 1e-5 * ref_norm.item<double>());
    for (size_t i = 0; i < mine.size(); ++i) {
      EXPECT_TRUE(torch::allclose(mine[i], original[i] * factor, 1e-5, 1e-6)) << i;
    }
    EXPECT_TRUE(torch::allclose(extra, torch::full({4}, factor), 1e-5, 1e-6));
  }
}

// Over two communicators in turn (here the world twice) the squares add up
// twice: sum_over names each axis whose ranks hold disjoint parts.
TEST(GradClipMpiTest, SumsOverEveryCommunicatorAndSkipsUndefined) {
  auto comm = MakeWorldCommunicator();
  const int n = WorldSize();
  torch::Tensor g = torch::full({3}, 2.0f);  // 12 per rank
  const torch::Tensor norm =
      ClipGradNormDistributed({g, torch::Tensor()}, {}, 0.0, {comm.get(), comm.get()});
  EXPECT_NEAR(norm.item<double>(), std::sqrt(12.0 * n * n), 1e-4);
  const torch::Tensor alone = ClipGradNormDistributed({g}, {g}, 1.0, {});
  EXPECT_NEAR(alone.item<double>(), std::sqrt(12.0), 1e-5);
  EXPECT_TRUE(torch::allclose(g.norm(), torch::tensor(1.0f), 1e-4, 1e-5));
}

}  // namespace
}  // namespace fulcrum::optim
