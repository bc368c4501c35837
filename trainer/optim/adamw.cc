#include "trainer/optim/adamw.h"

#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::optim {
namespace {

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ","), "]");
}

// Checks that state[key] exists, is fp32 and has `like`'s shape.
absl::Status CheckStateTensor(const std::map<std::string, torch::Tensor>& state,
                              const std::string& key, const torch::Tensor& like) {
  auto it = state.find(key);
  if (it == state.end()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: missing key '", key, "'"));
  }
  const torch::Tensor& t = it->second;
  if (!t.defined() || t.scalar_type() != torch::kFloat || t.sizes() != like.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer state: '", key, "' must be float32 ", ShapeString(like), ", got ",
                     t.defined() ? absl::StrCat(c10::toString(t.scalar_type()), " ", ShapeString(t))
                                 : std::string("an undefined tensor")));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<NamedParameter> TrainableParameters(torch::nn::Module& module,
                                                bool decay_norms_and_biases) {
  std::vector<NamedParameter> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    const bool decay = decay_norms_and_biases || item.value().dim() >= 2;
    out.push_back(NamedParameter{item.key(), item.value(), decay});
  }
  return out;
}

AdamW::AdamW(std::vector<NamedParameter> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  torch::NoGradGuard no_grad;
  std::set<std::string> names;
  for (const NamedParameter& p : params_) {
    FULCRUM_CHECK(p.param.defined(), "parameter ", p.name, " is undefined");
    FULCRUM_CHECK(p.param.is_floating_point(), "parameter ", p.name, " is not floating point");
    FULCRUM_CHECK(names.insert(p.name).second, "parameter ", p.name, " given twice");
    // The fp32 param is its own master; a bf16 one gets an fp32 copy.
    master_.push_back(p.param.scalar_type() == torch::kFloat
                          ? p.param
                          : p.param.detach().to(torch::kFloat).clone());
    exp_avg_.push_back(torch::zeros_like(master_.back()));
    exp_avg_sq_.push_back(torch::zeros_like(master_.back()));
  }
}

void AdamW::Step(double lr) {
  ++step_;
  if (params_.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;  // fp32, each its param's shape
  std::vector<torch::Tensor> decayed;
  grads.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor g = params_[i].param.grad();
    if (!g.defined()) {
      g = torch::zeros_like(master_[i]);
    } else if (g.scalar_type() != torch::kFloat) {
      g = g.to(torch::kFloat);
    }
    grads.push_back(g);
    if (params_[i].decay) decayed.push_back(master_[i]);
  }
  const double beta1 = options_.beta1;
  const double beta2 = options_.beta2;
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step_));

  // Same order of operations as torch::optim::AdamW.
  if (options_.weight_decay != 0.0 && !decayed.empty()) {
    at::_foreach_mul_(decayed, 1.0 - lr * options_.weight_decay);
  }
  at::_foreach_mul_(exp_avg_, beta1);
  at::_foreach_add_(exp_avg_, grads, 1.0 - beta1);
  at::_foreach_mul_(exp_avg_sq_, beta2);
  at::_foreach_addcmul_(exp_avg_sq_, grads, grads, 1.0 - beta2);
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(exp_avg_sq_);
  at::_foreach_div_(denom, std::sqrt(bias_correction2));
  at::_foreach_add_(denom, options_.eps);
  at::_foreach_addcdiv_(master_, exp_avg_, denom, -lr / bias_correction1);

  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].param.scalar_type() != torch::kFloat) params_[i].param.copy_(master_[i]);
  }
}

void AdamW::ZeroGrad() {
  for (NamedParameter& p : params_) {
    if (p.param.grad().defined()) p.param.mutable_grad() = torch::Tensor();
  }
}

std::vector<checkpoint::NamedTensor> AdamW::StateDict() const {
  std::vector<checkpoint::NamedTensor> out;
  out.push_back({"step", torch::full({1}, step_, torch::TensorOptions().dtype(torch::kLong))});
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({"exp_avg." + params_[i].name, exp_avg_[i]});
    out.push_back({"exp_avg_sq." + params_[i].name, exp_avg_sq_[i]});
    if (params_[i].param.scalar_type() != torch::kFloat) {
      out.push_back({"master." + params_[i].name, master_[i]});
    }
  }
  return out;
}

absl::Status AdamW::LoadStateDict(const std::map<std::string, torch::Tensor>& state) {
  // Validate everything before changing anything.
  auto step_it = state.find("step");
  if (step_it == state.end()) {
    return absl::InvalidArgumentError("optimizer state: missing key 'step'");
  }
  const torch::Tensor& step = step_it->second;
  if (!step.defined() || step.scalar_type() != torch::kLong || step.numel() != 1) {
    return absl::InvalidArgumentError("optimizer state: 'step' must be int64 [1]");
  }
  std::set<std::string> expected = {"step"};
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].name;
    std::vector<std::string> keys = {"exp_avg." + name, "exp_avg_sq." + name};
    if (params_[i].param.scalar_type() != torch::kFloat) keys.push_back("master." + name);
    for (const std::string& key : keys) {
      FULCRUM_RETURN_IF_ERROR(CheckStateTensor(state, key, master_[i]));
      expected.insert(key);
    }
  }
  for (const auto& [key, value] : state) {
    if (expected.count(key) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: unexpected key '", key, "' (no such parameter)"));
    }
  }
  torch::NoGradGuard no_grad;
  const int64_t new_step = step.to(torch::kCPU).item<int64_t>();
  if (new_step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: 'step' is ", new_step));
  }
  step_ = new_step;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].name;
    exp_avg_[i].copy_(state.at("exp_avg." + name));
    exp_avg_sq_[i].copy_(state.at("exp_avg_sq." + name));
    if (params_[i].param.scalar_type() != torch::kFloat) {
      master_[i].copy_(state.at("master." + name));
      params_[i].param.copy_(master_[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::optim
