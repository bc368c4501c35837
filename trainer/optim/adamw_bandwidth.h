// The memory bandwidth an AdamW update gets on this host, measured: the
// planner's rate for the optimizer's pass over its states
// (plan/step_time_model.h). Measured rather than taken from a plain copy: on
// the CPU the fused update (adamw_cpu_kernel.h) computes a division and a
// square root per element, and the torch ops where it does not apply are
// bound by their arithmetic.
#pragma once

#include <cstdint>

namespace fulcrum::optim {

// fp32 AdamW state bytes an update reads and writes per parameter: master,
// moments and gradient read, master and moments written.
constexpr double kAdamWStateBytesPerParam = 7.0 * 4.0;

// kAdamWStateBytesPerParam x params / the best of `repeats` AdamWUpdate
// calls over `params` parameters (one fp32 tensor, weight decay on), on the
// CPU with the current threads.
double MeasureAdamWBandwidth(int64_t params = int64_t{4} << 20, int repeats = 3);

}  // namespace fulcrum::optim
