// DeviceMesh::Build: one MPI_Comm_split of the world per axis (color = the
// group's first global rank, key = global rank, so a rank's index in its
// split equals its index in the layout's ascending group), then one
// Communicator of the chosen backend over each split.
#include "parallel/mesh/device_mesh.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel {
namespace {

struct GroupSpec {
  std::string name;        // "tp", "dp", ...
  std::vector<int> ranks;  // global ranks, ascending, containing this rank
};

// Collective over `parent`: every rank of `parent` calls it with its own group
// (the groups partition `parent`). Returns the split handle, which the caller
// owns; checks it against the layout's group.
MPI_Comm SplitFor(MPI_Comm parent, const GroupSpec& spec, int global_rank) {
  MPI_Comm split = MPI_COMM_NULL;
  FULCRUM_MPI_CHECK(MPI_Comm_split(parent, spec.ranks.front(), global_rank, &split));
  int size = 0, rank = 0;
  FULCRUM_MPI_CHECK(MPI_Comm_size(split, &size));
  FULCRUM_MPI_CHECK(MPI_Comm_rank(split, &rank));
  const auto mine = std::find(spec.ranks.begin(), spec.ranks.end(), global_rank);
  FULCRUM_CHECK(size == static_cast<int>(spec.ranks.size()) && mine != spec.ranks.end() &&
                    rank == mine - spec.ranks.begin(),
                spec.name, " split of rank ", global_rank, " has size ", size, " rank ", rank,
                ", the layout says {", absl::StrJoin(spec.ranks, ","), "}");
  return split;
}

absl::StatusOr<std::unique_ptr<ProcessGroup>> MakeGroup(MPI_Comm comm, GroupSpec spec,
                                                        CommBackend backend,
                                                        const CommOptions& options) {
  absl::StatusOr<std::unique_ptr<Communicator>> communicator =
      CreateCommunicator(backend, comm, spec.name, options);
  if (!communicator.ok()) {
    return Annotate(communicator.status(),
                    absl::StrCat("creating the ", spec.name, " communicator"));
  }
  return std::make_unique<ProcessGroup>(std::move(spec.name), std::move(spec.ranks),
                                        std::move(*communicator));
}

// Split + communicator; the split handle is freed (the communicator dups it)
// unless `keep` takes it.
absl::StatusOr<std::unique_ptr<ProcessGroup>> SplitGroup(MPI_Comm parent, GroupSpec spec,
                                                         int global_rank, CommBackend backend,
                                                         const CommOptions& options,
                                                         MPI_Comm* keep = nullptr) {
  MPI_Comm split = SplitFor(parent, spec, global_rank);
  absl::StatusOr<std::unique_ptr<ProcessGroup>> group =
      MakeGroup(split, std::move(spec), backend, options);
  if (keep != nullptr && group.ok()) {
    *keep = split;
  } else {
    FULCRUM_MPI_CHECK(MPI_Comm_free(&split));
  }
  return group;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceMesh>> DeviceMesh::Build(const World& world,
                                                              const MeshDegrees& degrees,
                                                              CommBackend backend,
                                                              const CommOptions& options) {
  FULCRUM_ASSIGN_OR_RETURN(MeshLayout layout, MeshLayout::Create(degrees, world.size()));
  const int me = world.rank();
  std::unique_ptr<DeviceMesh> mesh(new DeviceMesh(layout, me, backend, options));
  mesh->coordinates_ = layout.CoordinatesOf(me);
  std::vector<int> all(world.size());
  for (int r = 0; r < world.size(); ++r) all[r] = r;
  FULCRUM_ASSIGN_OR_RETURN(mesh->world_,
                           MakeGroup(world.comm(), {"world", std::move(all)}, backend, options));
  // NOTE: every rank runs the splits in this same order (each is collective
  // over the world).
  const MPI_Comm parent = world.comm();
  FULCRUM_ASSIGN_OR_RETURN(mesh->tp_, SplitGroup(parent, {"tp", layout.TpGroup(me)}, me, backend,
                                                 options, &mesh->tp_split_));
  FULCRUM_ASSIGN_OR_RETURN(mesh->dp_,
                           SplitGroup(parent, {"dp", layout.DpGroup(me)}, me, backend, options));
  FULCRUM_ASSIGN_OR_RETURN(mesh->pp_,
                           SplitGroup(parent, {"pp", layout.PpGroup(me)}, me, backend, options));
  FULCRUM_ASSIGN_OR_RETURN(
      mesh->pp_gradients_,
      SplitGroup(parent, {"pp_gradients", layout.PpGroup(me)}, me, backend, options));
  FULCRUM_ASSIGN_OR_RETURN(mesh->ep_,
                           SplitGroup(parent, {"ep", layout.EpGroup(me)}, me, backend, options));
  FULCRUM_ASSIGN_OR_RETURN(
      mesh->expert_dp_,
      SplitGroup(parent, {"expert_dp", layout.ExpertDpGroup(me)}, me, backend, options));
  FULCRUM_ASSIGN_OR_RETURN(
      mesh->embedding_,
      SplitGroup(parent, {"embedding", layout.EmbeddingGroup(me)}, me, backend, options));
  return mesh;
}

ProcessGroup& DeviceMesh::KvReplicaGroup(int replicas) {
  for (const auto& [cached_replicas, group] : kv_replica_groups_) {
    if (cached_replicas == replicas) return *group;
  }
  GroupSpec spec{absl::StrCat("kv_replica", replicas), layout_.TpSubgroup(global_rank_, replicas)};
  absl::StatusOr<std::unique_ptr<ProcessGroup>> group;
  if (replicas == 1) {
    // A group of one needs no collective.
    group = MakeGroup(MPI_COMM_SELF, std::move(spec), backend_, options_);
  } else {
    FULCRUM_CHECK(tp_split_ != MPI_COMM_NULL, "the tp split was not kept");
    group = SplitGroup(tp_split_, std::move(spec), global_rank_, backend_, options_);
  }
  // NOTE: the degrees and the backend were accepted by Build already, so a
  // failure here is not the user's input.
  FULCRUM_CHECK(group.ok(), "kv replica group of ", replicas, ": ", group.status().ToString());
  kv_replica_groups_.emplace_back(replicas, std::move(*group));
  return *kv_replica_groups_.back().second;
}

DeviceMesh::~DeviceMesh() {
  int finalized = 0;
  FULCRUM_MPI_CHECK(MPI_Finalized(&finalized));
  if (tp_split_ != MPI_COMM_NULL && !finalized) FULCRUM_MPI_CHECK(MPI_Comm_free(&tp_split_));
}

}  // namespace fulcrum::parallel
