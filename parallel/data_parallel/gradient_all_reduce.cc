#include "parallel/data_parallel/gradient_all_reduce.h"

#include "core/check.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel {

void AllReduceGradients(const std::vector<torch::Tensor>& grads, MPI_Comm comm) {
  if (grads.empty()) return;
  std::vector<torch::Tensor> flat;
  flat.reserve(grads.size());
  for (const torch::Tensor& g : grads) {
    FULCRUM_CHECK(g.defined() && g.device().is_cpu(), "MPI gradient reduction needs CPU tensors");
    flat.push_back(g.reshape({-1}).to(torch::kFloat));
  }
  torch::Tensor buffer = torch::cat(flat);
  // MPI counts are int: reduce in chunks below 2^30 elements.
  constexpr int64_t kChunk = int64_t{1} << 30;
  float* data = buffer.data_ptr<float>();
  for (int64_t begin = 0; begin < buffer.numel(); begin += kChunk) {
    const int count = static_cast<int>(std::min(kChunk, buffer.numel() - begin));
    FULCRUM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + begin, count, MPI_FLOAT, MPI_SUM, comm));
  }
  int64_t offset = 0;
  for (const torch::Tensor& g : grads) {
    const int64_t n = g.numel();
    g.copy_(buffer.narrow(0, offset, n).view(g.sizes()));
    offset += n;
  }
}

double AllReduceSum(double value, MPI_Comm comm) {
  double sum = 0.0;
  FULCRUM_MPI_CHECK(MPI_Allreduce(&value, &sum, 1, MPI_DOUBLE, MPI_SUM, comm));
  return sum;
}

}  // namespace fulcrum::parallel
