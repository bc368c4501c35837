// ReceiveBufferPool (see receive_buffer_pool.h).
#include "parallel/pipeline/receive_buffer_pool.h"

namespace fulcrum::parallel::pipeline {

namespace {

// A new tensor on `buffer`'s storage: it holds a storage reference (so the
// buffer counts as taken) but has its own TensorImpl and autograd state.
torch::Tensor OnStorageOf(const torch::Tensor& buffer) {
  torch::NoGradGuard no_grad;
  return torch::empty({0}, buffer.options()).set_(buffer.storage(), 0, buffer.sizes());
}

}  // namespace

torch::Tensor ReceiveBufferPool::Acquire(const std::vector<int64_t>& shape,
                                         const torch::TensorOptions& options) {
  for (const torch::Tensor& buffer : buffers_) {
    if (buffer.sizes() == c10::IntArrayRef(shape) && buffer.dtype() == options.dtype() &&
        buffer.device() == options.device() && buffer.storage().use_count() == 1) {
      return OnStorageOf(buffer);
    }
  }
  buffers_.push_back(torch::empty(shape, options));
  return OnStorageOf(buffers_.back());
}

int64_t ReceiveBufferPool::bytes() const {
  int64_t total = 0;
  for (const torch::Tensor& buffer : buffers_) total += buffer.nbytes();
  return total;
}

}  // namespace fulcrum::parallel::pipeline
