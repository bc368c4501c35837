#include "trainer/metrics/flops.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_format.h"
#include "trainer/models/matrix_product.h"

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
  // Kernels are asynchronous on CUDA: the clock brackets a synchronisation.
  const auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  const auto seconds_of_one = [&](torch::Tensor& c, const torch::Tensor& a,
                                  const torch::Tensor& b) {
    const auto start = std::chrono::steady_clock::now();
    torch::mm_out(c, a, b);
    sync();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const bool default_size = n <= 0;
  if (default_size) n = device.is_cuda() ? 8192 : 2048;
  if (default_size && !device.is_cuda()) {
    // Halved while one product, timed at 256, predicts over kBudgetSeconds:
    // a CPU without native bf16 (no AVX512-BF16 or AMX) multiplies it some
    // 35x slower than fp32, and 2048^3 then takes seconds per product. fp32
    // predicts well under the budget (small products run below the peak).
    constexpr double kBudgetSeconds = 1.0;
    constexpr int64_t kProbe = 256;
    const torch::Tensor a = torch::randn({kProbe, kProbe}, options);
    torch::Tensor c = torch::mm(a, a);  // warm-up
    double per_probe = 1e30;
    for (int i = 0; i < 3; ++i) per_probe = std::min(per_probe, seconds_of_one(c, a, a));
    while (n > kProbe &&
           per_probe * std::pow(static_cast<double>(n) / kProbe, 3) > kBudgetSeconds) {
      n /= 2;
    }
  }
  const torch::Tensor a = torch::randn({n, n}, options);
  const torch::Tensor b = torch::randn({n, n}, options);
  torch::Tensor c = torch::mm(a, b);  // warm-up
  sync();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) best = std::min(best, seconds_of_one(c, a, b));
  // The model's fp32 CPU products go through oneDNN (models/matrix_product.h):
  // the peak is the faster of the two, so that MFU is not against the slower.
  if (!device.is_cuda() && dtype == torch::kFloat && models::MatrixProductUsesOneDnn()) {
    models::MatrixProductInto(c, a, b);  // warm-up
    for (int i = 0; i < repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      models::MatrixProductInto(c, a, b);
      best = std::min(
          best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  return 2.0 * static_cast<double>(n) * n * n / best;
}

std::string SlowDtypeWarning(const torch::Device& device, torch::ScalarType dtype,
                             double dtype_peak) {
  if (device.is_cuda() || dtype == torch::kFloat) return "";
  const double fp32_peak = MeasureGemmFlops(device, torch::kFloat);
  if (dtype_peak >= fp32_peak / 2) return "";
  return absl::StrFormat(
      "this CPU multiplies %s matrices at %.3g GFLOP/s against fp32's %.3g GFLOP/s (%.0fx "
      "slower: no AVX512-BF16 or AMX, so it is emulated); precision.dtype=fp32 trains faster on "
      "this machine",
      c10::toString(dtype), dtype_peak / 1e9, fp32_peak / 1e9, fp32_peak / dtype_peak);
}

}  // namespace fulcrum::metrics
