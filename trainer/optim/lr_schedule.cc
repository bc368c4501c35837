#include "trainer/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace fulcrum::optim {

bool IsKnownSchedule(const std::string& type) {
  return type == "constant" || type == "linear" || type == "cosine";
}

double LearningRate(const ScheduleOptions& options, double base_lr, int64_t step,
                    int64_t total_steps) {
  FULCRUM_CHECK(IsKnownSchedule(options.type), "unknown lr schedule '", options.type, "'");
  FULCRUM_CHECK(step >= 0, "step=", step);
  const int64_t warmup = options.warmup_steps;
  if (step < warmup) {
    return base_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  }
  if (options.type == "constant") return base_lr;
  const double progress =
      std::clamp(static_cast<double>(step - warmup) /
                     static_cast<double>(std::max<int64_t>(1, total_steps - warmup)),
                 0.0, 1.0);
  const double factor =
      options.type == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  const double min_ratio = options.min_lr_ratio;
  return base_lr * (min_ratio + (1.0 - min_ratio) * factor);
}

}  // namespace fulcrum::optim
