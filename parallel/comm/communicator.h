// Communicator: collectives and point-to-point transfers among the ranks of
// one process group, in NCCL's shape.
//
// Two backends implement it: MpiCommunicator (CPU tensors, over an MPI
// sub-communicator) and NcclCommunicator (CUDA tensors). Every operation has
// an asynchronous form returning a Work handle and a blocking form that waits
// on it. Tensors must be contiguous; in-place operations write their input.
//
// Failure is fatal and loud, never a hang: a Work that does not complete
// within CommOptions::timeout_seconds (a peer crashed or never called the
// collective) ends every rank with a message naming this rank, the group,
// the operation and its size; so does an error reported by the backend.
//
//   auto work = comm.AllReduceAsync(grad_bucket, ReduceOp::kSum);
//   ...  // more backward runs meanwhile
//   work->Wait();
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fulcrum::parallel {

enum class ReduceOp { kSum, kMax, kMin };
const char* ReduceOpName(ReduceOp op);

// How the MPI backend sums 16-bit floats (MPI has no bf16/fp16 type).
enum class HalfPrecisionReduction {
  kFp32Staging,  // convert to fp32, reduce, round back once: as NCCL's result for 2 ranks
  kNative,       // a user-defined MPI op adding in 16-bit pairwise (rounds at every hop)
};

struct CommOptions {
  double timeout_seconds = 1800.0;  // a Work not done by then is fatal (names rank and op)
  HalfPrecisionReduction half_reduction = HalfPrecisionReduction::kFp32Staging;
};

// A launched operation. Wait() returns once what the caller runs next sees
// the result: on the CPU (MPI) the operation is complete; on a GPU (NCCL)
// the kernels queued after Wait() on the current stream run after it, and
// the host does not wait. Test() asks without blocking. The Work keeps every
// tensor it uses alive until then. Destroying a Work that was never waited
// on waits for it.
class Work {
 public:
  virtual ~Work() = default;
  virtual void Wait() = 0;
  virtual bool Test() = 0;
};
using WorkHandle = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group, 0..size-1
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "tp", "dp", "world", ...
  virtual const char* backend() const = 0;      // "mpi" | "nccl"

  // t (any shape) reduced elementwise over the group, in place.
  virtual WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) = 0;
  // input: size() * output.numel() elements; rank r gets the reduction of
  // the r-th contiguous chunk of every rank's input.
  virtual WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) = 0;
  // output: size() * input.numel() elements, rank r's input at chunk r.
  virtual WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) = 0;
  // Uneven all-gather: rank r contributes counts[r] elements (its
  // input.numel()); output holds sum(counts) elements in rank order.
  virtual WorkHandle AllGatherVAsync(torch::Tensor input, torch::Tensor output,
                                     const std::vector<int64_t>& counts) = 0;
  // all_to_all_single: input rows (dim 0) are sent in consecutive blocks of
  // input_splits[r] rows to rank r; output receives output_splits[r] rows
  // from rank r, in rank order. Empty split lists mean equal blocks
  // (dim 0 divisible by size()). Rows may have any trailing shape.
  virtual WorkHandle AllToAllAsync(torch::Tensor input, torch::Tensor output,
                                   const std::vector<int64_t>& output_splits,
                                   const std::vector<int64_t>& input_splits) = 0;
  // root's t copied into every rank's t.
  virtual WorkHandle BroadcastAsync(torch::Tensor t, int root) = 0;
  // Point to point; `peer` is a rank of this group. Inside a P2pGroup the
  // transfer is queued and launched with the others (the Work returned here
  // is then a no-op; wait on the group's).
  virtual WorkHandle SendAsync(torch::Tensor t, int peer) = 0;
  virtual WorkHandle RecvAsync(torch::Tensor t, int peer) = 0;
  virtual void Barrier() = 0;

  // Blocking forms. A backend may override the four busiest with its
  // blocking calls (MPI's are faster than its non-blocking ones); they keep
  // the timeout.
  virtual void AllReduce(torch::Tensor t, ReduceOp op = ReduceOp::kSum) {
    AllReduceAsync(t, op)->Wait();
  }
  virtual void ReduceScatter(torch::Tensor input, torch::Tensor output,
                             ReduceOp op = ReduceOp::kSum) {
    ReduceScatterAsync(input, output, op)->Wait();
  }
  virtual void AllGather(torch::Tensor input, torch::Tensor output) {
    AllGatherAsync(input, output)->Wait();
  }
  void AllGatherV(torch::Tensor input, torch::Tensor output, const std::vector<int64_t>& counts) {
    AllGatherVAsync(input, output, counts)->Wait();
  }
  virtual void AllToAll(torch::Tensor input, torch::Tensor output,
                        const std::vector<int64_t>& output_splits = {},
                        const std::vector<int64_t>& input_splits = {}) {
    AllToAllAsync(input, output, output_splits, input_splits)->Wait();
  }
  void Broadcast(torch::Tensor t, int root) { BroadcastAsync(t, root)->Wait(); }
  void Send(torch::Tensor t, int peer) { SendAsync(t, peer)->Wait(); }
  void Recv(torch::Tensor t, int peer) { RecvAsync(t, peer)->Wait(); }

 protected:
  friend class P2pGroup;
  // Batched point-to-point (ncclGroupStart/End; MPI: the queued
  // Isend/Irecv are posted together and completed by one Waitall).
  virtual void GroupStart() = 0;
  virtual WorkHandle GroupEnd() = 0;
};

// A batch of sends and receives launched together (no ordering deadlock
// between them):
//   { P2pGroup group(comm); comm.SendAsync(a, next); comm.RecvAsync(b, prev);
//     WorkHandle w = group.Launch(); ... w->Wait(); }
// Without Launch(), the destructor launches and waits.
class P2pGroup {
 public:
  explicit P2pGroup(Communicator& comm) : comm_(comm) { comm_.GroupStart(); }
  ~P2pGroup() {
    if (!launched_) comm_.GroupEnd()->Wait();
  }
  P2pGroup(const P2pGroup&) = delete;
  P2pGroup& operator=(const P2pGroup&) = delete;
  WorkHandle Launch() {
    launched_ = true;
    return comm_.GroupEnd();
  }

 private:
  Communicator& comm_;
  bool launched_ = false;
};

}  // namespace fulcrum::parallel
