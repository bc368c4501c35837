// Learning-rate schedules with linear warmup (Hugging Face conventions).
#pragma once

#include <cstdint>
#include <string>

namespace fulcrum::optim {

struct ScheduleOptions {
  std::string type = "cosine";  // "constant" | "linear" | "cosine"
  int64_t warmup_steps = 0;     // linear ramp from 0 over these steps
  double min_lr_ratio = 0.0;    // floor of the decay, as a fraction of base_lr
};

// True for the schedule types LearningRate knows.
bool IsKnownSchedule(const std::string& type);

// lr for optimizer step `step` (0-based) of `total_steps`:
//   step < warmup: base_lr * step / max(1, warmup)
//   then, with progress = (step - warmup) / max(1, total - warmup) in [0, 1],
//   factor = 1 (constant) | 1 - progress (linear) | 0.5 (1 + cos(pi progress)) (cosine),
//   lr = base_lr * (min_lr_ratio + (1 - min_lr_ratio) * factor).
// NOTE: an unknown type is a bug here (the recipe validates it): FULCRUM_CHECK.
double LearningRate(const ScheduleOptions& options, double base_lr, int64_t step,
                    int64_t total_steps);

}  // namespace fulcrum::optim
