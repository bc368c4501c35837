// ConcurrentBranch: a computation that may run alongside what follows it,
// joined where its result is used. MoeBlock runs its shared expert this way,
// so that on a GPU the shared expert's kernels overlap the token exchange
// (the all-to-alls of dispatch and combine) and the routed experts.
//
// On CUDA (a CUDA LibTorch, CUDA inputs) the computation's kernels go to a
// pooled side stream that first waits, by an event, for the work already
// queued on the current stream; Join() makes the current stream wait for the
// branch by another event. The host never synchronises. Autograd runs each
// op's backward on the stream of its forward and orders the gradients that
// cross streams, so the backward of the branch overlaps as well. Elsewhere
// (the CPU) the computation runs inline in the constructor: the same ops in
// the same order, hence the same numbers on every device.
//
//   ConcurrentBranch shared({x}, [&] { return shared_mlp->forward(x); });
//   torch::Tensor routed = ...;  // the exchange and the routed experts
//   torch::Tensor y = routed + shared.Join();
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace fulcrum::models {

class ConcurrentBranch {
 public:
  // inputs: the tensors `compute` reads that were produced before it (on
  // CUDA they are kept from reuse by the allocator until the branch is done).
  ConcurrentBranch(const std::vector<torch::Tensor>& inputs,
                   const std::function<torch::Tensor()>& compute);
  ~ConcurrentBranch();
  ConcurrentBranch(const ConcurrentBranch&) = delete;
  ConcurrentBranch& operator=(const ConcurrentBranch&) = delete;

  // The branch's result, ordered before whatever the current stream runs
  // next. Call once.
  torch::Tensor Join();
  // Whether the computation went to a side stream (CUDA only).
  bool on_side_stream() const { return side_ != nullptr; }

 private:
  struct SideStream;  // the CUDA stream and events; defined only with CUDA
  torch::Tensor result_;
  std::unique_ptr<SideStream> side_;
  bool joined_ = false;
};

}  // namespace fulcrum::models
