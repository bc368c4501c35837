#include "trainer/optim/adamw_update.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::optim {
namespace {

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace

void AdamWUpdate(const AdamWOptions& options, double lr, int64_t step, AdamWTensors& t) {
  const size_t n = t.master.size();
  FULCRUM_CHECK(t.exp_avg.size() == n && t.exp_avg_sq.size() == n && t.grad.size() == n &&
                    t.decay.size() == n,
                "AdamWUpdate: lists of different lengths");
  if (n == 0) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> decayed;
  for (size_t i = 0; i < n; ++i) {
    if (t.decay[i]) decayed.push_back(t.master[i]);
  }
  const double beta1 = options.beta1;
  const double beta2 = options.beta2;
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));

  // Same order of operations as torch::optim::AdamW.
  if (options.weight_decay != 0.0 && !decayed.empty()) {
    at::_foreach_mul_(decayed, 1.0 - lr * options.weight_decay);
  }
  at::_foreach_mul_(t.exp_avg, beta1);
  at::_foreach_add_(t.exp_avg, t.grad, 1.0 - beta1);
  at::_foreach_mul_(t.exp_avg_sq, beta2);
  at::_foreach_addcmul_(t.exp_avg_sq, t.grad, t.grad, 1.0 - beta2);
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(t.exp_avg_sq);
  at::_foreach_div_(denom, std::sqrt(bias_correction2));
  at::_foreach_add_(denom, options.eps);
  at::_foreach_addcdiv_(t.master, t.exp_avg, denom, -lr / bias_correction1);
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
