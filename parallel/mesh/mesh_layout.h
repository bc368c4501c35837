// MeshLayout: the arithmetic of the device mesh, without MPI.
//
// world = pp x dp x tp, tp fastest, so the tp ranks of a group are adjacent
// global ranks (one node's GPUs, on NVLink), then dp, then pp:
//
//   rank = (pp_index * dp + dp_index) * tp + tp_index
//
// Expert parallelism splits each dp group further (ep divides dp): dp_index =
// edp_index * ep + ep_index. An ep group is ep consecutive dp indices (same
// pp, tp, edp); the expert-data-parallel group holds the ranks with the same
// experts (same pp, tp, ep_index), over which expert gradients are reduced.
// The embedding group is the first and the last pipeline stage of one
// (dp, tp) column: they hold tied embedding copies.
//
// Worked example: 16 ranks, pp=2, dp=4, tp=2, ep=2.
//
//   rank:      0  1  2  3  4  5  6  7 |  8  9 10 11 12 13 14 15
//   pp_index:  0  0  0  0  0  0  0  0 |  1  1  1  1  1  1  1  1
//   dp_index:  0  0  1  1  2  2  3  3 |  0  0  1  1  2  2  3  3
//   tp_index:  0  1  0  1  0  1  0  1 |  0  1  0  1  0  1  0  1
//   ep_index:  0  0  1  1  0  0  1  1 |  0  0  1  1  0  0  1  1
//   edp_index: 0  0  0  0  1  1  1  1 |  0  0  0  0  1  1  1  1
//
//   tp groups:         {0,1} {2,3} ... {14,15}
//   dp groups:         {0,2,4,6} {1,3,5,7} {8,10,12,14} {9,11,13,15}
//   pp groups:         {0,8} {1,9} ... {7,15}
//   ep groups:         {0,2} {4,6} {1,3} {5,7} {8,10} ... (same pp, tp, edp)
//   expert-dp groups:  {0,4} {2,6} {1,5} {3,7} {8,12} ... (same pp, tp, ep_index)
//   embedding groups:  {0,8} {1,9} ... (first and last stage; = pp groups here)
//
// A middle pipeline stage (pp > 2) holds no embedding: its embedding group is
// itself alone, so every rank has one.
#pragma once

#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::parallel {

struct MeshDegrees {
  int pp = 1;
  int dp = 1;
  int tp = 1;
  int ep = 1;  // divides dp
};

struct MeshCoordinates {
  int pp = 0;
  int dp = 0;
  int tp = 0;
  int ep = 0;   // index in the ep group
  int edp = 0;  // index in the expert-data-parallel group
};

class MeshLayout {
 public:
  // world_size must equal pp*dp*tp and ep divide dp; every degree >= 1. The
  // error prints the arithmetic ("parallel: pp(1) x dp(2) x tp(2) = 4, but
  // the world has 2 ranks").
  static absl::StatusOr<MeshLayout> Create(const MeshDegrees& degrees, int world_size);

  const MeshDegrees& degrees() const { return degrees_; }
  int world_size() const { return degrees_.pp * degrees_.dp * degrees_.tp; }
  int RankOf(int pp, int dp, int tp) const;
  MeshCoordinates CoordinatesOf(int rank) const;

  // The global ranks of `rank`'s group along each axis, ascending; `rank`'s
  // index in the list is its rank in that group.
  std::vector<int> TpGroup(int rank) const;
  std::vector<int> DpGroup(int rank) const;
  std::vector<int> PpGroup(int rank) const;
  std::vector<int> EpGroup(int rank) const;
  std::vector<int> ExpertDpGroup(int rank) const;
  // {first stage, last stage} of rank's (dp, tp) column ({rank} when pp = 1
  // or when rank is a middle stage, which holds no embedding).
  std::vector<int> EmbeddingGroup(int rank) const;
  // Ranks whose global rank differs only in `tp` coordinate AND share the
  // same kv head when a tp group replicates kv heads: tp/replicas groups of
  // `replicas` adjacent tp ranks. replicas must divide tp (FULCRUM_CHECK:
  // ValidateParallelForModel rejects models where it would not).
  std::vector<int> TpSubgroup(int rank, int replicas) const;

 private:
  explicit MeshLayout(const MeshDegrees& degrees) : degrees_(degrees) {}
  MeshDegrees degrees_;
};

}  // namespace fulcrum::parallel
