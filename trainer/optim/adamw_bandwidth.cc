#include "trainer/optim/adamw_bandwidth.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>

#include "trainer/optim/adamw_update.h"

namespace fulcrum::optim {

double MeasureAdamWBandwidth(int64_t params, int repeats) {
  torch::NoGradGuard no_grad;
  params = std::max<int64_t>(1, params);
  AdamWTensors t;
  t.master = {torch::randn({params})};
  t.exp_avg = {torch::zeros({params})};
  t.exp_avg_sq = {torch::zeros({params})};
  t.grad = {torch::randn({params})};
  t.decay = {true};
  AdamWOptions options;
  options.weight_decay = 0.01;
  AdamWUpdate(options, 1e-4, 1, 1.0f, t);  // warm-up: every page touched
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    AdamWUpdate(options, 1e-4, i + 2, 1.0f, t);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count());
  }
  return kAdamWStateBytesPerParam * static_cast<double>(params) / best;
}

}  // namespace fulcrum::optim
