#include "trainer/optim/adamw_update.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/parallel_for.h"
#include "core/status.h"
#include "trainer/optim/adamw_cpu_kernel.h"

namespace fulcrum::optim {
namespace {

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

struct AdamWScalars {
  double decay_factor;  // 1 - lr * weight_decay, or 1 when there is none
  double beta1, beta2, eps;
  double sqrt_bias_correction2;
  double step_size;  // -lr / bias_correction1
  float grad_scale;  // the gradients are read times this
};

// The update over parallel lists of fp32 tensors, in torch::optim::AdamW's
// order of ops: the multi-tensor kernels on CUDA, and on the CPU for the
// entries AdamWCpuKernel does not take (CpuKernelTakes).
void ForeachUpdate(const AdamWScalars& a, at::TensorList master, at::TensorList exp_avg,
                   at::TensorList exp_avg_sq, at::TensorList grad, at::TensorList decayed) {
  // The clip's in-place scaling, as the grads are consumed. A float, as the
  // fp32 kernels take a scalar.
  if (a.grad_scale != 1.0f) at::_foreach_mul_(grad, static_cast<double>(a.grad_scale));
  if (a.decay_factor != 1.0 && !decayed.empty()) at::_foreach_mul_(decayed, a.decay_factor);
  at::_foreach_mul_(exp_avg, a.beta1);
  at::_foreach_add_(exp_avg, grad, 1.0 - a.beta1);
  at::_foreach_mul_(exp_avg_sq, a.beta2);
  at::_foreach_addcmul_(exp_avg_sq, grad, grad, 1.0 - a.beta2);
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(exp_avg_sq);
  at::_foreach_div_(denom, a.sqrt_bias_correction2);
  at::_foreach_add_(denom, a.eps);
  at::_foreach_addcdiv_(master, exp_avg, denom, a.step_size);
}

// Elements per task of the CPU kernel: large enough that a small tensor is
// one task, small enough that both halves of a 2-thread split stay busy.
constexpr int64_t kCpuGrainElements = 64 * 1024;

AdamWCpuScalars CpuScalars(const AdamWScalars& a) {
  AdamWCpuScalars s;  // each scalar rounded to fp32, as ATen's fp32 kernels take it
  s.decay_factor = static_cast<float>(a.decay_factor);
  s.beta1 = static_cast<float>(a.beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - a.beta1);
  s.beta2 = static_cast<float>(a.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - a.beta2);
  s.sqrt_bias_correction2 = static_cast<float>(a.sqrt_bias_correction2);
  s.eps = static_cast<float>(a.eps);
  s.step_size = static_cast<float>(a.step_size);
  s.grad_scale = a.grad_scale;
  return s;
}

torch::Tensor RoundedOf(const AdamWTensors& t, size_t i) {
  return i < t.rounded.size() ? t.rounded[i] : torch::Tensor();
}

// Where the one-pass CPU kernel takes entry i: fp32 state, an fp32 or bf16
// gradient and a bf16 rounded copy, each one contiguous range of master's size.
bool CpuKernelTakes(const AdamWTensors& t, size_t i) {
  const int64_t n = t.master[i].numel();
  auto contiguous = [n](const torch::Tensor& x) { return x.is_contiguous() && x.numel() == n; };
  bool takes = true;
  for (const torch::Tensor& state : {t.master[i], t.exp_avg[i], t.exp_avg_sq[i]}) {
    takes = takes && contiguous(state) && state.scalar_type() == torch::kFloat;
  }
  const torch::ScalarType grad = t.grad[i].scalar_type();
  takes = takes && contiguous(t.grad[i]) && (grad == torch::kFloat || grad == torch::kBFloat16);
  const torch::Tensor rounded = RoundedOf(t, i);
  return takes &&
         (!rounded.defined() || (contiguous(rounded) && rounded.scalar_type() == torch::kBFloat16));
}

// Entry i op by op: the gradient widened to fp32 first, the rounded copy after.
void OpsUpdate(const AdamWScalars& a, AdamWTensors& t, size_t i) {
  const torch::Tensor grad = t.grad[i].to(torch::kFloat);
  const bool decay = t.decay[i] && a.decay_factor != 1.0;
  ForeachUpdate(a, {t.master[i]}, {t.exp_avg[i]}, {t.exp_avg_sq[i]}, {grad},
                decay ? at::TensorList(&t.master[i], 1) : at::TensorList());
  const torch::Tensor rounded = RoundedOf(t, i);
  if (rounded.defined()) rounded.copy_(t.master[i]);
}

void CpuUpdate(const AdamWScalars& a, AdamWTensors& t) {
  AdamWCpuScalars scalars = CpuScalars(a);
  for (size_t i = 0; i < t.master.size(); ++i) {
    if (!CpuKernelTakes(t, i)) {
      OpsUpdate(a, t, i);
      continue;
    }
    scalars.decay = t.decay[i] && a.decay_factor != 1.0;
    float* master = t.master[i].data_ptr<float>();
    float* exp_avg = t.exp_avg[i].data_ptr<float>();
    float* exp_avg_sq = t.exp_avg_sq[i].data_ptr<float>();
    const torch::Tensor rounded_tensor = RoundedOf(t, i);
    c10::BFloat16* rounded =
        rounded_tensor.defined() ? rounded_tensor.data_ptr<c10::BFloat16>() : nullptr;
    const torch::Tensor& grad = t.grad[i];
    ParallelFor(0, t.master[i].numel(), kCpuGrainElements, [&](int64_t begin, int64_t end) {
      float* m = master + begin;
      float* ea = exp_avg + begin;
      float* eas = exp_avg_sq + begin;
      c10::BFloat16* r = rounded != nullptr ? rounded + begin : nullptr;
      if (grad.scalar_type() == torch::kFloat) {
        AdamWCpuKernel(scalars, m, ea, eas, grad.data_ptr<float>() + begin, r, end - begin);
      } else {
        AdamWCpuKernel(scalars, m, ea, eas, grad.data_ptr<c10::BFloat16>() + begin, r, end - begin);
      }
    });
  }
}

}  // namespace

void AdamWUpdate(const AdamWOptions& options, double lr, int64_t step, float grad_scale,
                 AdamWTensors& t) {
  const size_t n = t.master.size();
  FULCRUM_CHECK(t.exp_avg.size() == n && t.exp_avg_sq.size() == n && t.grad.size() == n &&
                    t.decay.size() == n,
                "AdamWUpdate: lists of different lengths");
  if (n == 0) return;
  torch::NoGradGuard no_grad;
  AdamWScalars a;
  a.decay_factor = options.weight_decay != 0.0 ? 1.0 - lr * options.weight_decay : 1.0;
  a.beta1 = options.beta1;
  a.beta2 = options.beta2;
  a.eps = options.eps;
  a.sqrt_bias_correction2 = std::sqrt(1.0 - std::pow(a.beta2, static_cast<double>(step)));
  a.step_size = -lr / (1.0 - std::pow(a.beta1, static_cast<double>(step)));
  a.grad_scale = grad_scale;
  FULCRUM_CHECK(t.rounded.empty() || t.rounded.size() == n,
                "AdamWUpdate: rounded list of another length");
  if (!t.master[0].is_cuda()) return CpuUpdate(a, t);

  std::vector<torch::Tensor> decayed, grads;
  for (size_t i = 0; i < n; ++i) {
    if (t.decay[i]) decayed.push_back(t.master[i]);
    grads.push_back(t.grad[i].to(torch::kFloat));
  }
  ForeachUpdate(a, t.master, t.exp_avg, t.exp_avg_sq, grads, decayed);
  for (size_t i = 0; i < t.rounded.size(); ++i) {
    if (t.rounded[i].defined()) t.rounded[i].copy_(t.master[i]);
  }
}

namespace {

absl::Status CheckStateTensor(const std::map<std::string, torch::Tensor>& state,
                              const std::string& key, torch::IntArrayRef shape) {
  auto it = state.find(key);
  if (it == state.end()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: missing key '", key, "'"));
  }
  const torch::Tensor& t = it->second;
  if (!t.defined() || t.scalar_type() != torch::kFloat || t.sizes() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer state: '", key, "' must be float32 ", ShapeString(shape), ", got ",
        t.defined() ? absl::StrCat(c10::toString(t.scalar_type()), " ", ShapeString(t.sizes()))
                    : std::string("an undefined tensor")));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> StateStep(const std::map<std::string, torch::Tensor>& state) {
  auto it = state.find("step");
  if (it == state.end()) {
    return absl::InvalidArgumentError("optimizer state: missing key 'step'");
  }
  const torch::Tensor& step = it->second;
  if (!step.defined() || step.scalar_type() != torch::kLong || step.numel() != 1) {
    return absl::InvalidArgumentError("optimizer state: 'step' must be int64 [1]");
  }
  const int64_t value = step.to(torch::kCPU).item<int64_t>();
  if (value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: 'step' is ", value));
  }
  return value;
}

}  // namespace

absl::StatusOr<int64_t> ValidateAdamWState(const std::map<std::string, torch::Tensor>& state,
                                           const std::vector<NamedParameter>& params) {
  FULCRUM_ASSIGN_OR_RETURN(const int64_t step, StateStep(state));
  std::set<std::string> expected = {"step"};
  for (const NamedParameter& p : params) {
    std::vector<std::string> keys = {"exp_avg." + p.name, "exp_avg_sq." + p.name};
    if (p.param.scalar_type() != torch::kFloat) keys.push_back("master." + p.name);
    for (const std::string& key : keys) {
      FULCRUM_RETURN_IF_ERROR(CheckStateTensor(state, key, p.param.sizes()));
      expected.insert(key);
    }
  }
  for (const auto& [key, value] : state) {
    if (expected.count(key) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: unexpected key '", key, "' (no such parameter)"));
    }
  }
  return step;
}

}  // namespace fulcrum::optim
