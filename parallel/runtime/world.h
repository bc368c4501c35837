// World: the process's place among all ranks.
//
// Owns MPI init/finalize. Started by mpirun (or srun) it spans every rank;
// started directly it is a one-rank world. The local rank (rank among the
// processes of this node) picks the CUDA device.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

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

  // How long AgreeOn waits for the other ranks by default. Ranks reach an
  // agreement far apart in normal runs (rank 0 publishing a checkpoint and
  // pruning old ones while the others wait; one rank's share of a large
  // checkpoint on a slow filesystem), so this is torch.distributed's gloo
  // timeout rather than the step's collectives' parallel.comm_timeout_s.
  static constexpr absl::Duration kAgreeTimeout = absl::Minutes(30);

  // Agrees on a status across ranks: if any rank failed, every rank returns
  // the first failing rank's status (so all exit non-zero with the message).
  // Waits at most `timeout` for the other ranks: a rank that never arrives
  // (hung, stopped, stuck on a filesystem) ends the job, every rank, with a
  // message naming it, instead of a silent hang. Rank 0 names the ranks it
  // still waits for every minute; the others, that they wait for rank 0.
  absl::Status AgreeOn(const absl::Status& local, absl::Duration timeout = kAgreeTimeout) const;

  // Every rank's string, in rank order, on every rank (host-side messages:
  // checkpoint plans and file lists). Waits like AgreeOn: a rank that never
  // arrives ends the job, every rank, with a message naming it.
  std::vector<std::string> AllGatherStrings(const std::string& mine,
                                            absl::Duration timeout = kAgreeTimeout) const;

  // Prints the error on this rank and ends every rank with exit code `code`.
  [[noreturn]] void Abort(const absl::Status& status, int code = 1) const;

 private:
  World(int rank, int size, int local_rank, int local_size, MPI_Comm agree)
      : rank_(rank),
        size_(size),
        local_rank_(local_rank),
        local_size_(local_size),
        agree_comm_(agree) {}

  // `status`, from rank `rank`, as AgreeOn returns it on this rank.
  absl::Status FromRank(const absl::Status& status, int rank) const;

  // Rank 0's answer to every rank's part, given the parts in rank order.
  using RootAnswer = std::function<std::string(std::vector<std::string> parts)>;

  // AgreeOn's and AllGatherStrings's exchange: every rank's `mine` reaches
  // rank 0 point to point (so that rank 0 can name the ranks that never
  // send), and rank 0's `answer` reaches every rank, which returns it. Waits
  // at most `timeout`, then ends the job on every rank naming who did not
  // reach `point`; rank 0 names the ranks it still waits for every minute,
  // the others that they wait for rank 0. `tag` tells the kinds of exchange
  // apart.
  std::string ThroughRoot(const std::string& mine, int tag, absl::Duration timeout,
                          const std::string& point, const RootAnswer& answer) const;

  int rank_;
  int size_;
  int local_rank_;
  int local_size_;
  // ThroughRoot's own messages (rank 0 gathers, then answers), apart from
  // every other communication on MPI_COMM_WORLD.
  MPI_Comm agree_comm_;
};

}  // namespace fulcrum::parallel
