// NcclCommunicator: the Communicator for CUDA tensors (built only with
// FULCRUM_WITH_NCCL).
//
// Bootstrapped over MPI: rank 0 of the group makes the ncclUniqueId and
// broadcasts it (MPI_Bcast), every rank calls ncclCommInitRank on the
// current CUDA device (the World picked it from the local rank).
//
// Streams: every operation runs on this communicator's own non-blocking
// stream, ordered after the compute stream (the current LibTorch CUDA stream
// when a CUDA LibTorch is present, else the legacy default stream) by an
// event. The Work is an event recorded after the operation; Wait() makes the
// compute stream wait on it and returns without a host sync (the kernels
// queued after it run after the operation; what the operation read or wrote
// is then safe to free, since the caching allocator hands a block out again
// on the compute stream only). The event goes to this communicator's
// CompletionWatchdog, which polls it (and ncclCommGetAsyncError) until
// CommOptions::timeout_seconds, then aborts the NCCL communicator and ends
// every rank with a message naming this rank and the operation. Barrier()
// alone blocks the host until the barrier is done.
//
// Uneven all-gather and all-to-all are grouped ncclSend/ncclRecv; barrier is
// a one-element all-reduce. Argument checks, layouts, waiting and messages
// are shared with the MPI backend (comm_common.h), so its tests cover them.
//
// NOTE: the communicator must outlive its Work handles.
#pragma once

#ifdef FULCRUM_WITH_NCCL

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/comm_common.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/completion_watchdog.h"

namespace fulcrum::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over the ranks of `group`; errors of NCCL/CUDA set-up are
  // returned (no device, NCCL init failure), naming the call.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(MPI_Comm group,
                                                              const std::string& name,
                                                              const CommOptions& options);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return identity_->rank; }
  int size() const override { return identity_->size; }
  const std::string& name() const override { return identity_->name; }
  const char* backend() const override { return "nccl"; }

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
  NcclCommunicator(std::shared_ptr<const CommIdentity> identity, CommOptions options,
                   ncclComm_t comm, cudaStream_t stream, void* barrier_buffer);

  // Orders the communication stream after the compute stream.
  void WaitForCompute(const OpDescription& op);
  // After the NCCL calls of `op`: an event-backed Work keeping `tensors`
  // alive (inside a P2pGroup: a completed no-op; GroupEnd records).
  WorkHandle Finish(const OpDescription& op, std::vector<torch::Tensor> tensors);
  void CheckNccl(ncclResult_t rc, const char* call, const OpDescription& op) const;
  void CheckCuda(cudaError_t rc, const char* call, const OpDescription& op) const;

  std::shared_ptr<const CommIdentity> identity_;
  CommOptions options_;
  ncclComm_t comm_;
  cudaStream_t stream_;   // dedicated, non-blocking
  void* barrier_buffer_;  // [1] float32 on the device
  int group_depth_ = 0;
  std::vector<torch::Tensor> group_tensors_;  // queued in the open P2pGroup
  // Watches the events of the Works waited on; drained before comm_ goes.
  std::unique_ptr<CompletionWatchdog> watchdog_;
};

}  // namespace fulcrum::parallel

#endif  // FULCRUM_WITH_NCCL
