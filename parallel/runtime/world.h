// World: the process's place among all ranks.
//
// Owns MPI init/finalize. Started by mpirun (or srun) it spans every rank;
// started directly it is a one-rank world. The local rank (rank among the
// processes of this node) picks the CUDA device.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::parallel {

class World {
 public:
  // Initializes MPI (thread level FUNNELED) once per process.
  static absl::StatusOr<std::unique_ptr<World>> Init(int* argc, char*** argv);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  bool is_root() const { return rank_ == 0; }
  MPI_Comm comm() const { return MPI_COMM_WORLD; }

  // "cpu", or "cuda" -> cuda:<local_rank mod visible devices>.
  absl::StatusOr<torch::Device> DeviceFor(const std::string& kind) const;

  // CPU threads for this rank: OMP_NUM_THREADS when set, else the node's
  // cores shared evenly by the ranks on it (never oversubscribed).
  int CpuThreadsPerRank() const;

  void Barrier() const;

  // Agrees on a status across ranks: if any rank failed, every rank returns
  // the first failing rank's status (so all exit non-zero with the message).
  absl::Status AgreeOn(const absl::Status& local) const;

  // Every rank's string, in rank order, on every rank (small host-side
  // messages: checkpoint plans and file lists).
  std::vector<std::string> AllGatherStrings(const std::string& mine) const;

  // Prints the error on this rank and ends every rank with exit code `code`.
  [[noreturn]] void Abort(const absl::Status& status, int code = 1) const;

 private:
  World(int rank, int size, int local_rank, int local_size)
      : rank_(rank), size_(size), local_rank_(local_rank), local_size_(local_size) {}

  int rank_;
  int size_;
  int local_rank_;
  int local_size_;
};

}  // namespace fulcrum::parallel
