// MeshLayout: the worked 16-rank example of mesh_layout.h, group by group,
// then the degree errors.
#include "parallel/mesh/mesh_layout.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

namespace fulcrum::parallel {
namespace {

using Groups = std::vector<std::vector<int>>;

// Example of the header: 16 ranks, pp=2, dp=4, tp=2, ep=2.
MeshLayout Example() {
  absl::StatusOr<MeshLayout> layout =
      MeshLayout::Create({/*pp=*/2, /*dp=*/4, /*tp=*/2, /*ep=*/2}, 16);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

// Every rank's group along one axis must be one of `expected` and contain the
// rank; together the groups seen are exactly `expected`.
template <typename GroupOf>
void ExpectGroups(const MeshLayout& layout, GroupOf group_of, const Groups& expected,
                  const std::string& axis) {
  std::set<std::vector<int>> seen;
  for (int rank = 0; rank < layout.world_size(); ++rank) {
    const std::vector<int> group = group_of(rank);
    seen.insert(group);
    EXPECT_NE(std::find(group.begin(), group.end(), rank), group.end())
        << axis << " group of rank " << rank << " misses it";
  }
  EXPECT_EQ(seen, std::set<std::vector<int>>(expected.begin(), expected.end())) << axis;
}

TEST(MeshLayoutTest, CoordinatesOfTheWorkedExample) {
  const MeshLayout layout = Example();
  const std::vector<int> pp = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  const std::vector<int> dp = {0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3};
  const std::vector<int> tp = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
  const std::vector<int> ep = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1};
  const std::vector<int> edp = {0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
  for (int rank = 0; rank < 16; ++rank) {
    const MeshCoordinates c = layout.CoordinatesOf(rank);
    EXPECT_EQ(c.pp, pp[rank]) << rank;
    EXPECT_EQ(c.dp, dp[rank]) << rank;
    EXPECT_EQ(c.tp, tp[rank]) << rank;
    EXPECT_EQ(c.ep, ep[rank]) << rank;
    EXPECT_EQ(c.edp, edp[rank]) << rank;
    EXPECT_EQ(layout.RankOf(c.pp, c.dp, c.tp), rank);
  }
}

TEST(MeshLayoutTest, GroupsOfTheWorkedExample) {
  const MeshLayout l = Example();
  ExpectGroups(
      l, [&](int r) { return l.TpGroup(r); },
      {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}, "tp");
  ExpectGroups(
      l, [&](int r) { return l.DpGroup(r); },
      {{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}, "dp");
  const Groups pp = {{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}};
  ExpectGroups(
      l, [&](int r) { return l.PpGroup(r); }, pp, "pp");
  ExpectGroups(
      l, [&](int r) { return l.EpGroup(r); },
      {{0, 2}, {4, 6}, {1, 3}, {5, 7}, {8, 10}, {12, 14}, {9, 11}, {13, 15}}, "ep");
  ExpectGroups(
      l, [&](int r) { return l.ExpertDpGroup(r); },
      {{0, 4}, {2, 6}, {1, 5}, {3, 7}, {8, 12}, {10, 14}, {9, 13}, {11, 15}}, "expert_dp");
  ExpectGroups(
      l, [&](int r) { return l.EmbeddingGroup(r); }, pp, "embedding");
}

TEST(MeshLayoutTest, RankIndexInGroupIsItsGroupRank) {
  const MeshLayout l = Example();
  // Rank 13: pp 1, dp 2, tp 1, ep 0, edp 1.
  EXPECT_EQ(l.TpGroup(13), (std::vector<int>{12, 13}));
  EXPECT_EQ(l.DpGroup(13), (std::vector<int>{9, 11, 13, 15}));
  EXPECT_EQ(l.EpGroup(13), (std::vector<int>{13, 15}));
  EXPECT_EQ(l.ExpertDpGroup(13), (std::vector<int>{9, 13}));
  EXPECT_EQ(l.PpGroup(13), (std::vector<int>{5, 13}));
}

TEST(MeshLayoutTest, EmbeddingGroupOfMiddleStagesIsThemselves) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create({/*pp=*/3, /*dp=*/1, /*tp=*/2, /*ep=*/1}, 6);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->EmbeddingGroup(1), (std::vector<int>{1, 5}));
  EXPECT_EQ(l->EmbeddingGroup(5), (std::vector<int>{1, 5}));
  EXPECT_EQ(l->EmbeddingGroup(2), (std::vector<int>{2}));
  EXPECT_EQ(l->EmbeddingGroup(3), (std::vector<int>{3}));
  EXPECT_EQ(l->PpGroup(3), (std::vector<int>{1, 3, 5}));
}

TEST(MeshLayoutTest, SingleRankHasGroupsOfOne) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create({}, 1);
  ASSERT_TRUE(l.ok()) << l.status();
  const std::vector<int> self = {0};
  EXPECT_EQ(l->TpGroup(0), self);
  EXPECT_EQ(l->DpGroup(0), self);
  EXPECT_EQ(l->PpGroup(0), self);
  EXPECT_EQ(l->EpGroup(0), self);
  EXPECT_EQ(l->ExpertDpGroup(0), self);
  EXPECT_EQ(l->EmbeddingGroup(0), self);
  EXPECT_EQ(l->TpSubgroup(0, 1), self);
}

TEST(MeshLayoutTest, TpSubgroupsAreAdjacentTpRanks) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create({/*pp=*/1, /*dp=*/2, /*tp=*/4, /*ep=*/1}, 8);
  ASSERT_TRUE(l.ok()) << l.status();
  // tp=4 over 2 kv heads: each kv head is held by 2 adjacent tp ranks.
  EXPECT_EQ(l->TpSubgroup(0, 2), (std::vector<int>{0, 1}));
  EXPECT_EQ(l->TpSubgroup(3, 2), (std::vector<int>{2, 3}));
  EXPECT_EQ(l->TpSubgroup(6, 2), (std::vector<int>{6, 7}));
  EXPECT_EQ(l->TpSubgroup(5, 4), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(l->TpSubgroup(5, 1), (std::vector<int>{5}));
}

TEST(MeshLayoutDeathTest, TpSubgroupReplicasMustDivideTp) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create({/*pp=*/1, /*dp=*/1, /*tp=*/4, /*ep=*/1}, 4);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_DEATH(l->TpSubgroup(0, 3), "kv replicas 3 must divide tp\\(4\\)");
  EXPECT_DEATH(l->TpSubgroup(0, 0), "must divide tp");
  EXPECT_DEATH(l->CoordinatesOf(4), "rank 4 outside a world of 4");
}

struct BadDegrees {
  MeshDegrees degrees;
  int world_size;
  std::string message;
};

TEST(MeshLayoutTest, RejectsBadDegreesWithTheArithmetic) {
  const std::vector<BadDegrees> cases = {
      {{1, 2, 2, 1}, 2, "parallel: pp(1) x dp(2) x tp(2) = 4, but the world has 2 ranks"},
      {{2, 1, 1, 1}, 1, "pp(2) x dp(1) x tp(1) = 2, but the world has 1 rank"},
      {{1, 4, 1, 3}, 4, "ep(3) does not divide dp(4): 4 % 3 = 1"},
      {{0, 1, 1, 1}, 1, "parallel.pp must be >= 1, got 0"},
      {{1, -1, 1, 1}, 1, "parallel.dp must be >= 1, got -1"},
      {{1, 1, 0, 1}, 1, "parallel.tp must be >= 1, got 0"},
      {{1, 2, 1, 0}, 2, "parallel.ep must be >= 1, got 0"},
  };
  for (const BadDegrees& c : cases) {
    const absl::StatusOr<MeshLayout> layout = MeshLayout::Create(c.degrees, c.world_size);
    ASSERT_FALSE(layout.ok()) << c.message;
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(layout.status().message()).find(c.message), std::string::npos)
        << "got: " << layout.status().message() << "\nwant: " << c.message;
  }
}

TEST(MeshLayoutTest, EpDividingDpIsAccepted) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create({/*pp=*/1, /*dp=*/4, /*tp=*/1, /*ep=*/4}, 4);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->EpGroup(2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(l->ExpertDpGroup(2), (std::vector<int>{2}));
}

}  // namespace
}  // namespace fulcrum::parallel
