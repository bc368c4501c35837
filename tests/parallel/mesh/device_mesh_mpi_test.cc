// DeviceMesh over MPI on 2, 3 and 4 ranks: for every valid layout of the
// world, each group's ranks, size and rank match the MeshLayout, and an
// all-reduce of the global rank over each group equals the sum of the
// layout's group ranks.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/mesh/device_mesh.h"
#include "tests/test_support.h"

namespace fulcrum::parallel {
namespace {

std::string Describe(const MeshDegrees& d) {
  return absl::StrCat("pp", d.pp, " dp", d.dp, " tp", d.tp, " ep", d.ep);
}

// Every (pp, dp, tp, ep) with pp*dp*tp = world and ep dividing dp.
std::vector<MeshDegrees> AllLayouts(int world) {
  std::vector<MeshDegrees> layouts;
  for (int pp = 1; pp <= world; ++pp) {
    for (int dp = 1; dp <= world; ++dp) {
      if (world % (pp * dp) != 0) continue;
      for (int ep = 1; ep <= dp; ++ep) {
        if (dp % ep == 0) layouts.push_back({pp, dp, world / (pp * dp), ep});
      }
    }
  }
  return layouts;
}

// The group's ranks, size and rank, then an all-reduce of the global rank.
void ExpectGroup(const ProcessGroup& group, const std::vector<int>& expected, int global_rank,
                 const std::string& where) {
  SCOPED_TRACE(absl::StrCat(where, " group ", group.name(), " on rank ", global_rank));
  EXPECT_EQ(group.ranks(), expected);
  ASSERT_EQ(group.size(), static_cast<int>(expected.size()));
  const auto mine = std::find(expected.begin(), expected.end(), global_rank);
  ASSERT_NE(mine, expected.end());
  EXPECT_EQ(group.rank(), mine - expected.begin());
  EXPECT_EQ(group.comm().name(), group.name());
  torch::Tensor t = torch::full({3}, static_cast<double>(global_rank), torch::kFloat64);
  group.comm().AllReduce(t, ReduceOp::kSum);
  const double sum = std::accumulate(expected.begin(), expected.end(), 0.0);
  EXPECT_EQ(t[0].item<double>(), sum);
  EXPECT_EQ(t[2].item<double>(), sum);
}

TEST(DeviceMeshMpiTest, EveryLayoutOfTheWorldMatchesTheLayout) {
  const World& world = testing::MpiTestWorld();
  const int me = world.rank();
  const std::vector<MeshDegrees> layouts = AllLayouts(world.size());
  ASSERT_GE(layouts.size(), 2u);
  for (const MeshDegrees& degrees : layouts) {
    const std::string where = Describe(degrees);
    absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
        DeviceMesh::Build(world, degrees, CommBackend::kMpi, CommOptions{});
    ASSERT_TRUE(mesh.ok()) << where << ": " << mesh.status();
    const DeviceMesh& m = **mesh;
    const MeshLayout& layout = m.layout();
    EXPECT_EQ(m.global_rank(), me);
    const MeshCoordinates expected = layout.CoordinatesOf(me);
    EXPECT_EQ(m.coordinates().pp, expected.pp) << where;
    EXPECT_EQ(m.coordinates().dp, expected.dp) << where;
    EXPECT_EQ(m.coordinates().tp, expected.tp) << where;
    EXPECT_EQ(m.coordinates().ep, expected.ep) << where;
    EXPECT_EQ(m.coordinates().edp, expected.edp) << where;
    std::vector<int> everyone(world.size());
    std::iota(everyone.begin(), everyone.end(), 0);
    ExpectGroup(m.world(), everyone, me, where);
    ExpectGroup(m.tp(), layout.TpGroup(me), me, where);
    ExpectGroup(m.dp(), layout.DpGroup(me), me, where);
    ExpectGroup(m.pp(), layout.PpGroup(me), me, where);
    ExpectGroup(m.pp_gradients(), layout.PpGroup(me), me, where);
    ExpectGroup(m.ep(), layout.EpGroup(me), me, where);
    ExpectGroup(m.expert_dp(), layout.ExpertDpGroup(me), me, where);
    ExpectGroup(m.embedding(), layout.EmbeddingGroup(me), me, where);
  }
}

TEST(DeviceMeshMpiTest, KvReplicaGroupsSplitTheTpGroupAndAreCached) {
  const World& world = testing::MpiTestWorld();
  const int me = world.rank();
  // All of the world on tp: every divisor of tp is a possible replica count.
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Build(world, {1, 1, world.size(), 1}, CommBackend::kMpi, CommOptions{});
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  for (int replicas = 1; replicas <= world.size(); ++replicas) {
    if (world.size() % replicas != 0) continue;
    ProcessGroup& group = (*mesh)->KvReplicaGroup(replicas);
    ExpectGroup(group, (*mesh)->layout().TpSubgroup(me, replicas), me,
                absl::StrCat("replicas ", replicas));
    EXPECT_EQ(&(*mesh)->KvReplicaGroup(replicas), &group) << "not cached";
  }
}

TEST(DeviceMeshMpiTest, BadDegreesFailOnEveryRankWithTheArithmetic) {
  const World& world = testing::MpiTestWorld();
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Build(world, {1, world.size(), 2, 1}, CommBackend::kMpi, CommOptions{});
  ASSERT_FALSE(mesh.ok());
  EXPECT_EQ(mesh.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(mesh.status().message())
                .find(absl::StrCat("pp(1) x dp(", world.size(), ") x tp(2) = ", 2 * world.size(),
                                   ", but the world has ", world.size(), " ranks")),
            std::string::npos)
      << mesh.status();
}

}  // namespace
}  // namespace fulcrum::parallel
