// The AdamW maths, in one place for AdamW (whole parameters) and ShardedAdamW
// (ZeRO-1 segments), plus the checks of a loaded optimizer state both share.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/optim/optimizer.h"

namespace fulcrum::optim {

struct AdamWOptions {
  double beta1 = 0.9;         // first-moment decay
  double beta2 = 0.95;        // second-moment decay
  double eps = 1e-8;          // added to sqrt(v_hat), outside the sqrt
  double weight_decay = 0.0;  // decoupled: p *= 1 - lr * weight_decay
};

// Parallel lists: entry i is one tensor (a parameter or a segment of one).
struct AdamWTensors {
  std::vector<torch::Tensor> master;      // fp32, updated in place (any shape)
  std::vector<torch::Tensor> exp_avg;     // fp32, master's shape, updated in place
  std::vector<torch::Tensor> exp_avg_sq;  // fp32, master's shape, updated in place
  // fp32, or bf16 for a 16-bit model; master's shape; consumed: the update
  // may scale it in place.
  std::vector<torch::Tensor> grad;
  std::vector<bool> decay;  // weight decay applies to master[i]
  // Empty, or per entry undefined or the 16-bit tensor (master's shape) that
  // receives the updated master rounded: a 16-bit model's parameter.
  std::vector<torch::Tensor> rounded;
};

// One decoupled-weight-decay Adam update (bias-corrected with `step`, the
// 1-based count including this one; eps outside the sqrt) from the gradients
// times `grad_scale` (the clip coefficient, fp32 as ClipCoefficient gives
// it), with the same order of operations as clipping them in place and
// stepping torch::optim::AdamW.
// NOTE: no host syncs: every scalar comes from the host.
void AdamWUpdate(const AdamWOptions& options, double lr, int64_t step, float grad_scale,
                 AdamWTensors& tensors);

// The whole AdamW state of `params` in full shapes (keys as AdamW::StateDict:
// "step" int64 [1] >= 0, fp32 "exp_avg.<name>" and "exp_avg_sq.<name>", and
// "master.<name>" for non-fp32 params), and no other key. -> the step count;
// else InvalidArgument naming the key.
absl::StatusOr<int64_t> ValidateAdamWState(const std::map<std::string, torch::Tensor>& state,
                                           const std::vector<NamedParameter>& params);

}  // namespace fulcrum::optim
