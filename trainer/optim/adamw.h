// AdamW with decoupled weight decay (PyTorch semantics) and an fp32 master
// copy for low-precision (bf16/fp16) parameters.
//
// Defines: TrainableParameters, AdamW (AdamWOptions: adamw_update.h,
// NamedParameter: optimizer.h).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/optim/adamw_update.h"
#include "trainer/optim/optimizer.h"

namespace fulcrum::optim {

// Trainable (requires_grad) parameters of `module` in registration order, with
// decay = false for 1-D tensors (norm weights, biases) unless
// decay_norms_and_biases.
std::vector<NamedParameter> TrainableParameters(torch::nn::Module& module,
                                                bool decay_norms_and_biases);

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<NamedParameter> params, AdamWOptions options);

  // One step of decoupled-weight-decay Adam (bias-corrected, eps outside the
  // sqrt). A parameter with an undefined grad steps with a zero grad (its
  // moments and weight decay still apply). Non-fp32 parameters are updated on
  // their fp32 master copy, then param = master.to(param dtype).
  // NOTE: no host syncs: every scalar comes from the host-side step count.
  void Step(double lr, float grad_scale) override;
  // Resets every grad to undefined.
  void ZeroGrad();
  int64_t step_count() const override { return step_; }
  const std::vector<NamedParameter>& parameters() const override { return params_; }

  // Everything needed to resume bit-exactly: "step" (int64 [1]),
  // "exp_avg.<name>", "exp_avg_sq.<name>" (fp32, param's shape) and
  // "master.<name>" (fp32, only for non-fp32 params).
  std::vector<checkpoint::NamedTensor> StateDict() const;
  std::vector<checkpoint::NamedTensor> StateDict() override;
  // Validates every key, shape and dtype first (error names the key), then
  // copies; on error nothing is changed. Unknown or missing keys are errors.
  absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& state) override;
  // exp_avg + exp_avg_sq + masters of non-fp32 params.
  std::vector<LocalStateShard> LocalState() override;
  void RestoreStepCount(int64_t step) override;
  int64_t state_bytes() const override;

 private:
  // Per-parameter fp32 state; the lists are parallel to params_.
  std::vector<NamedParameter> params_;
  AdamWOptions options_;
  int64_t step_ = 0;
  std::vector<torch::Tensor> master_;      // fp32 master, or the param itself when fp32
  std::vector<torch::Tensor> exp_avg_;     // fp32, param's shape
  std::vector<torch::Tensor> exp_avg_sq_;  // fp32, param's shape
};

}  // namespace fulcrum::optim
