#include "parallel/tensor/partial_gradients.h"

#include <cstdint>
#include <string>

#include "core/check.h"

namespace fulcrum::parallel::tensor {

void AllReducePartialGradients(const std::vector<torch::Tensor>& grads, Communicator& group) {
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> defined;
  for (const torch::Tensor& g : grads) {
    if (g.defined()) defined.push_back(g);
  }
  if (defined.empty()) return;
  torch::ScalarType buffer_dtype = torch::kFloat;
  int64_t total = 0;
  for (const torch::Tensor& g : defined) {
    FULCRUM_CHECK(c10::isFloatingType(g.scalar_type()), "partial gradient of dtype ",
                  std::string(c10::toString(g.scalar_type())), " is not floating point");
    FULCRUM_CHECK(g.device() == defined.front().device(), "partial gradients on ", g.device().str(),
                  " and ", defined.front().device().str());
    if (g.scalar_type() == torch::kDouble) buffer_dtype = torch::kDouble;
    total += g.numel();
  }
  // [total]: every gradient flattened, in list order.
  torch::Tensor buffer =
      torch::empty({total}, torch::TensorOptions().dtype(buffer_dtype).device(defined.front().device()));
  int64_t offset = 0;
  for (const torch::Tensor& g : defined) {
    buffer.narrow(0, offset, g.numel()).copy_(g.reshape({-1}));
    offset += g.numel();
  }
  group.AllReduce(buffer, ReduceOp::kSum);
  offset = 0;
  for (const torch::Tensor& g : defined) {
    // copy_ writes through any strides of g and casts back to its dtype.
    g.copy_(buffer.narrow(0, offset, g.numel()).view(g.sizes()));
    offset += g.numel();
  }
}

}  // namespace fulcrum::parallel::tensor
