#include "trainer/models/concurrent_branch.h"

#include <utility>

#include "core/check.h"

#ifdef FULCRUM_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fulcrum::models {

#ifdef FULCRUM_TORCH_HAS_CUDA
struct ConcurrentBranch::SideStream {
  c10::cuda::CUDAStream current;  // the stream the caller runs on
  c10::cuda::CUDAStream side;
  at::cuda::CUDAEvent done;  // recorded on `side` after the computation
};

namespace {

bool AllOnOneCudaDevice(const std::vector<torch::Tensor>& inputs) {
  if (inputs.empty()) return false;
  for (const torch::Tensor& t : inputs) {
    if (!t.defined() || !t.is_cuda() || t.device() != inputs.front().device()) return false;
  }
  return true;
}

}  // namespace
#else
struct ConcurrentBranch::SideStream {};
#endif

ConcurrentBranch::ConcurrentBranch(const std::vector<torch::Tensor>& inputs,
                                   const std::function<torch::Tensor()>& compute) {
#ifdef FULCRUM_TORCH_HAS_CUDA
  if (AllOnOneCudaDevice(inputs)) {
    const c10::DeviceIndex device = inputs.front().device().index();
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device);
    const c10::cuda::CUDAStream side =
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(current);
    inputs_ready.block(side);
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      result_ = compute();
    }
    // The inputs belong to the current stream's allocations: once freed
    // there, their blocks must not be handed out again before the side
    // stream has read them.
    for (const torch::Tensor& t : inputs) t.record_stream(side);
    side_ = std::make_unique<SideStream>(SideStream{current, side, at::cuda::CUDAEvent()});
    side_->done.record(side);
    return;
  }
#endif
  result_ = compute();
}

ConcurrentBranch::~ConcurrentBranch() {
  // An abandoned branch (an error unwinding the caller) still orders the
  // current stream after it, so nothing reads its memory early.
  if (!joined_ && side_ != nullptr) Join();
}

torch::Tensor ConcurrentBranch::Join() {
  FULCRUM_CHECK(!joined_, "a ConcurrentBranch is joined once");
  joined_ = true;
#ifdef FULCRUM_TORCH_HAS_CUDA
  if (side_ != nullptr) {
    side_->done.block(side_->current);
    // Allocated on the side stream, used on the current one from here on.
    if (result_.defined()) result_.record_stream(side_->current);
  }
#endif
  return std::move(result_);
}

}  // namespace fulcrum::models
