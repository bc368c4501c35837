// MpiCommunicator: the Communicator for CPU tensors, over a duplicated MPI
// communicator (its own matching space: nothing else on `group` can steal
// its messages).
//
// Every operation is posted with a non-blocking MPI call (MPI_Iallreduce,
// MPI_Ireduce_scatter_block, MPI_Iallgather(v), MPI_Ialltoallv, MPI_Ibcast,
// MPI_Isend/Irecv, MPI_Ibarrier) and returns a Work that polls MPI_Test until
// done or until CommOptions::timeout_seconds (then every rank ends with a
// message naming this rank and the operation).
//
// 16-bit floats (MPI has no such type): moved as 2-byte words; reduced either
// in fp32 staging buffers (kFp32Staging) or by user-defined MPI ops that add
// in fp32 and round every hop (kNative).
//
// Counts above INT_MAX (MPI's int counts): all_reduce, broadcast and p2p are
// split into several calls; reduce_scatter into per-root MPI_Ireduce calls;
// all_gather(v) and all_to_all into point-to-point exchanges.
//
// NOTE: thread level FUNNELED: call it (and Wait()) from the main thread only.
#pragma once

#include <mpi.h>

#include <array>
#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/comm_common.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/deadline_watchdog.h"

namespace fulcrum::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // Collective over the ranks of `group` (duplicated here).
  // max_count_per_call: the most elements one MPI call is given (INT_MAX;
  // tests lower it to run the large-count paths on tiny tensors).
  MpiCommunicator(MPI_Comm group, std::string name, CommOptions options,
                  int64_t max_count_per_call = INT_MAX);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return identity_->rank; }
  int size() const override { return identity_->size; }
  const std::string& name() const override { return identity_->name; }
  const char* backend() const override { return "mpi"; }
  MPI_Comm mpi_comm() const { return comm_; }

  // Blocking MPI calls under the watchdog (large counts: the async path).
  void AllReduce(torch::Tensor t, ReduceOp op = ReduceOp::kSum) override;
  void ReduceScatter(torch::Tensor input, torch::Tensor output,
                     ReduceOp op = ReduceOp::kSum) override;
  void AllGather(torch::Tensor input, torch::Tensor output) override;
  void AllToAll(torch::Tensor input, torch::Tensor output,
                const std::vector<int64_t>& output_splits = {},
                const std::vector<int64_t>& input_splits = {}) override;

  WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) override;
  WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) override;
  WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) override;
  WorkHandle AllGatherVAsync(torch::Tensor input, torch::Tensor output,
                             const std::vector<int64_t>& counts) override;
  WorkHandle AllToAllAsync(torch::Tensor input, torch::Tensor output,
                           const std::vector<int64_t>& output_splits,
                           const std::vector<int64_t>& input_splits) override;
  WorkHandle BroadcastAsync(torch::Tensor t, int root) override;
  WorkHandle SendAsync(torch::Tensor t, int peer) override;
  WorkHandle RecvAsync(torch::Tensor t, int peer) override;
  void Barrier() override;

 protected:
  void GroupStart() override;
  WorkHandle GroupEnd() override;

 private:
  struct PendingP2p {
    bool is_send;
    torch::Tensor tensor;
    int peer;
  };
  // The MPI datatype and op a reduction of `dtype` runs with.
  struct ReduceCall {
    MPI_Datatype type;
    MPI_Op op;
  };
  ReduceCall ReduceCallFor(torch::ScalarType dtype, ReduceOp op) const;
  bool StagesHalf(torch::ScalarType dtype) const;
  WorkHandle PointToPoint(bool is_send, torch::Tensor t, int peer);
  // Fatal (naming this rank and `op`) unless rc is MPI_SUCCESS.
  void CheckCall(int rc, const char* call, const OpDescription& op) const;

  std::shared_ptr<const CommIdentity> identity_;
  CommOptions options_;
  int64_t max_count_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  // kNative 16-bit reductions: [bf16 | fp16][sum | max | min].
  std::array<std::array<MPI_Op, 3>, 2> half_ops_{};
  std::unique_ptr<DeadlineWatchdog> watchdog_;  // times the blocking calls
  int group_depth_ = 0;
  std::vector<PendingP2p> pending_;
};

}  // namespace fulcrum::parallel
