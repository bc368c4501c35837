// ReceiveBufferPool: receive buffers for pipeline activations and gradients
// that are reused across micro-batches and steps.
//
// Open MPI's single-copy path (CMA) is several times slower into a receive
// buffer at an address it has not seen (about 6 ms against 0.8 ms for 2 MiB
// here), and a fresh torch::empty per receive is usually a new address; NCCL
// and a GPU caching allocator likewise favour stable buffers. A buffer is
// free again when nothing but the pool holds its storage: the received
// activation, its autograd graph and any deferred weight pass have let go, so
// reuse never overwrites live data and needs no explicit release.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace fulcrum::parallel::pipeline {

class ReceiveBufferPool {
 public:
  // A tensor of `shape` and `options` (contents undefined) that shares its
  // storage with no live tensor: a free pooled buffer of that shape, dtype
  // and device, else a new one added to the pool. The tensor is a plain
  // tensor of its own (not an autograd view), so it can become a leaf that
  // requires grad.
  torch::Tensor Acquire(const std::vector<int64_t>& shape, const torch::TensorOptions& options);

  size_t buffers() const { return buffers_.size(); }
  int64_t bytes() const;

 private:
  std::vector<torch::Tensor> buffers_;
};

}  // namespace fulcrum::parallel::pipeline
