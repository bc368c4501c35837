#include "trainer/metrics/flops.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>

namespace fulcrum::metrics {

double TrainingFlopsPerToken(const FlopsModel& model, int64_t seq_len) {
  const double dense = 6.0 * static_cast<double>(model.trainable_matmul_params) +
                       4.0 * static_cast<double>(model.frozen_matmul_params);
  const double attention = 6.0 * 2.0 * static_cast<double>(seq_len) *
                           static_cast<double>(model.head_dim * model.num_heads * model.num_layers);
  return dense + attention;
}

double MeasureGemmFlops(const torch::Device& device, torch::ScalarType dtype, int64_t n,
                        int repeats) {
  torch::NoGradGuard no_grad;
  if (n <= 0) n = device.is_cuda() ? 8192 : 2048;
  // Kernels are asynchronous on CUDA: the clock brackets a synchronisation.
  const auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  const torch::Tensor a = torch::randn({n, n}, options);
  const torch::Tensor b = torch::randn({n, n}, options);
  torch::Tensor c = torch::mm(a, b);  // warm-up
  sync();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    torch::mm_out(c, a, b);
    sync();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count());
  }
  return 2.0 * static_cast<double>(n) * n * n / best;
}

}  // namespace fulcrum::metrics
