#include "parallel/mesh/mesh_layout.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"

namespace fulcrum::parallel {

absl::StatusOr<MeshLayout> MeshLayout::Create(const MeshDegrees& degrees, int world_size) {
  std::vector<std::string> problems;
  const struct {
    const char* name;
    int value;
  } axes[] = {{"pp", degrees.pp}, {"dp", degrees.dp}, {"tp", degrees.tp}, {"ep", degrees.ep}};
  for (const auto& axis : axes) {
    if (axis.value < 1) {
      problems.push_back(absl::StrCat("parallel.", axis.name, " must be >= 1, got ", axis.value));
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("parallel: ", absl::StrJoin(problems, "; ")));
  }
  if (degrees.dp % degrees.ep != 0) {
    problems.push_back(absl::StrCat("ep(", degrees.ep, ") does not divide dp(", degrees.dp, "): ",
                                    degrees.dp, " % ", degrees.ep, " = ", degrees.dp % degrees.ep));
  }
  // int64 so that absurd degrees cannot overflow into a matching product.
  const int64_t product = int64_t{degrees.pp} * degrees.dp * degrees.tp;
  if (product != world_size) {
    problems.push_back(absl::StrCat("pp(", degrees.pp, ") x dp(", degrees.dp, ") x tp(", degrees.tp,
                                    ") = ", product, ", but the world has ", world_size,
                                    world_size == 1 ? " rank" : " ranks"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("parallel: ", absl::StrJoin(problems, "; ")));
  }
  return MeshLayout(degrees);
}

int MeshLayout::RankOf(int pp, int dp, int tp) const {
  FULCRUM_CHECK(
      pp >= 0 && pp < degrees_.pp && dp >= 0 && dp < degrees_.dp && tp >= 0 && tp < degrees_.tp,
      "coordinates (pp ", pp, ", dp ", dp, ", tp ", tp, ") outside the mesh pp(", degrees_.pp,
      ") x dp(", degrees_.dp, ") x tp(", degrees_.tp, ")");
  return (pp * degrees_.dp + dp) * degrees_.tp + tp;
}

MeshCoordinates MeshLayout::CoordinatesOf(int rank) const {
  FULCRUM_CHECK(rank >= 0 && rank < world_size(), "rank ", rank, " outside a world of ",
                world_size());
  MeshCoordinates c;
  c.tp = rank % degrees_.tp;
  c.dp = (rank / degrees_.tp) % degrees_.dp;
  c.pp = rank / (degrees_.tp * degrees_.dp);
  c.ep = c.dp % degrees_.ep;
  c.edp = c.dp / degrees_.ep;
  return c;
}

std::vector<int> MeshLayout::TpGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  std::vector<int> ranks;
  for (int tp = 0; tp < degrees_.tp; ++tp) ranks.push_back(RankOf(c.pp, c.dp, tp));
  return ranks;
}

std::vector<int> MeshLayout::DpGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  std::vector<int> ranks;
  for (int dp = 0; dp < degrees_.dp; ++dp) ranks.push_back(RankOf(c.pp, dp, c.tp));
  return ranks;
}

std::vector<int> MeshLayout::PpGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  std::vector<int> ranks;
  for (int pp = 0; pp < degrees_.pp; ++pp) ranks.push_back(RankOf(pp, c.dp, c.tp));
  return ranks;
}

std::vector<int> MeshLayout::EpGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  std::vector<int> ranks;
  for (int ep = 0; ep < degrees_.ep; ++ep) {
    ranks.push_back(RankOf(c.pp, c.edp * degrees_.ep + ep, c.tp));
  }
  return ranks;
}

std::vector<int> MeshLayout::ExpertDpGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  std::vector<int> ranks;
  for (int edp = 0; edp < degrees_.dp / degrees_.ep; ++edp) {
    ranks.push_back(RankOf(c.pp, edp * degrees_.ep + c.ep, c.tp));
  }
  return ranks;
}

std::vector<int> MeshLayout::EmbeddingGroup(int rank) const {
  const MeshCoordinates c = CoordinatesOf(rank);
  const bool holds_embedding = c.pp == 0 || c.pp == degrees_.pp - 1;
  if (degrees_.pp == 1 || !holds_embedding) return {rank};
  return {RankOf(0, c.dp, c.tp), RankOf(degrees_.pp - 1, c.dp, c.tp)};
}

std::vector<int> MeshLayout::TpSubgroup(int rank, int replicas) const {
  FULCRUM_CHECK(replicas >= 1 && degrees_.tp % replicas == 0, "kv replicas ", replicas,
                " must divide tp(", degrees_.tp, ")");
  const MeshCoordinates c = CoordinatesOf(rank);
  const int first = c.tp / replicas * replicas;
  std::vector<int> ranks;
  for (int tp = first; tp < first + replicas; ++tp) ranks.push_back(RankOf(c.pp, c.dp, tp));
  return ranks;
}

}  // namespace fulcrum::parallel
