// GlobalGradNorm under mpirun (2, 3, 4 ranks): the norm over ranks equals
// ClipGradNorm's of the concatenation of every rank's counted tensors, and
// every rank's ClipCoefficient is the factor ClipGradNorm scaled that by.
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

    const torch::Tensor norm = GlobalGradNorm(GradsOf(rank), {comm.get()});
    EXPECT_EQ(norm.dim(), 0);
    EXPECT_EQ(norm.scalar_type(), torch::kFloat);
    EXPECT_NEAR(norm.item<double>(), ref_norm.item<double>(), 1e-5 * ref_norm.item<double>());
    EXPECT_NEAR(ClipCoefficient(norm.item<float>(), max_norm), factor, 1e-5 * factor);
    // Every rank holds the same norm, so every rank steps with the same factor.
    std::vector<float> coefficients(n);
    const float mine = ClipCoefficient(norm.item<float>(), max_norm);
    MPI_Allgather(&mine, 1, MPI_FLOAT, coefficients.data(), 1, MPI_FLOAT, MPI_COMM_WORLD);
    for (float c : coefficients) EXPECT_EQ(c, mine);
  }
}

// Over two communicators in turn (here the world twice) the squares add up
// twice: sum_over names each axis whose ranks hold disjoint parts.
TEST(GradClipMpiTest, SumsOverEveryCommunicatorAndSkipsUndefined) {
  auto comm = MakeWorldCommunicator();
  const int n = WorldSize();
  torch::Tensor g = torch::full({3}, 2.0f);  // 12 per rank
  const torch::Tensor norm = GlobalGradNorm({g, torch::Tensor()}, {comm.get(), comm.get()});
  EXPECT_NEAR(norm.item<double>(), std::sqrt(12.0 * n * n), 1e-4);
  const torch::Tensor alone = GlobalGradNorm({g}, {});
  EXPECT_NEAR(alone.item<double>(), std::sqrt(12.0), 1e-5);
  EXPECT_TRUE(torch::equal(g, torch::full({3}, 2.0f)));  // not scaled
}

}  // namespace
}  // namespace fulcrum::optim
