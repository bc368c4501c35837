// DeviceMesh: this rank's process groups, one per axis of the MeshLayout
// (see mesh_layout.h for the rank arithmetic and a worked 16-rank example),
// built once at start-up from validated degrees and passed explicitly to
// whatever communicates. There is no global mesh.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/communicator_factory.h"
#include "parallel/mesh/mesh_layout.h"
#include "parallel/runtime/world.h"

namespace fulcrum::parallel {

// A named group of ranks with its communicator.
class ProcessGroup {
 public:
  ProcessGroup(std::string name, std::vector<int> ranks, std::unique_ptr<Communicator> comm)
      : name_(std::move(name)), ranks_(std::move(ranks)), comm_(std::move(comm)) {}

  const std::string& name() const { return name_; }
  const std::vector<int>& ranks() const { return ranks_; }  // global ranks, ascending
  int rank() const { return comm_->rank(); }                // this rank's index in ranks()
  int size() const { return comm_->size(); }
  Communicator& comm() const { return *comm_; }

 private:
  std::string name_;
  std::vector<int> ranks_;
  std::unique_ptr<Communicator> comm_;
};

class DeviceMesh {
 public:
  // Collective over the world: every rank builds its groups (MPI_Comm_split
  // per axis, then a communicator of `backend` for each).
  static absl::StatusOr<std::unique_ptr<DeviceMesh>> Build(const World& world,
                                                           const MeshDegrees& degrees,
                                                           CommBackend backend,
                                                           const CommOptions& options);

  const MeshLayout& layout() const { return layout_; }
  const MeshCoordinates& coordinates() const { return coordinates_; }
  int global_rank() const { return global_rank_; }

  ProcessGroup& world() const { return *world_; }
  ProcessGroup& tp() const { return *tp_; }
  ProcessGroup& dp() const { return *dp_; }
  ProcessGroup& pp() const { return *pp_; }
  // The pp ranks again, on a communicator of their own: the pipeline sends
  // activations on pp() and gradients here, so each channel's point-to-point
  // messages match in order.
  ProcessGroup& pp_gradients() const { return *pp_gradients_; }
  ProcessGroup& ep() const { return *ep_; }
  ProcessGroup& expert_dp() const { return *expert_dp_; }
  ProcessGroup& embedding() const { return *embedding_; }
  // The tp ranks that hold the same kv head when n_kv_heads < tp
  // (replicas = tp / n_kv_heads); built on first use for a given `replicas`,
  // which every tp rank must request together. replicas == 1: a group of one.
  ProcessGroup& KvReplicaGroup(int replicas);

  ~DeviceMesh();
  DeviceMesh(const DeviceMesh&) = delete;
  DeviceMesh& operator=(const DeviceMesh&) = delete;

 private:
  DeviceMesh(MeshLayout layout, int global_rank, CommBackend backend, CommOptions options)
      : layout_(std::move(layout)),
        global_rank_(global_rank),
        backend_(backend),
        options_(options) {}

  MeshLayout layout_;
  MeshCoordinates coordinates_;
  int global_rank_;
  CommBackend backend_;
  CommOptions options_;
  std::unique_ptr<ProcessGroup> world_, tp_, dp_, pp_, pp_gradients_, ep_, expert_dp_, embedding_;
  std::vector<std::pair<int, std::unique_ptr<ProcessGroup>>> kv_replica_groups_;
  // The tp axis' split of the world, kept so that KvReplicaGroup can split it
  // further (collective over the tp group only); freed by the destructor.
  MPI_Comm tp_split_ = MPI_COMM_NULL;
};

}  // namespace fulcrum::parallel
