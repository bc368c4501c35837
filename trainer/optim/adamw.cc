#include "trainer/optim/adamw.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::optim {

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

void AdamW::Step(double lr, float grad_scale) {
  ++step_;
  if (params_.empty()) return;
  torch::NoGradGuard no_grad;
  AdamWTensors tensors{master_, exp_avg_, exp_avg_sq_, {}, {}, {}};
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& param = params_[i].param;
    const torch::Tensor g = param.grad();
    // A 16-bit gradient goes as it is: the update widens it as it reads it.
    tensors.grad.push_back(g.defined() ? g : torch::zeros_like(master_[i]));
    tensors.decay.push_back(params_[i].decay);
    tensors.rounded.push_back(param.scalar_type() != torch::kFloat ? param : torch::Tensor());
  }
  AdamWUpdate(options_, lr, step_, grad_scale, tensors);
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

std::vector<checkpoint::NamedTensor> AdamW::StateDict() {
  return static_cast<const AdamW*>(this)->StateDict();
}

std::vector<LocalStateShard> AdamW::LocalState() {
  std::vector<LocalStateShard> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].name;
    out.push_back({"exp_avg." + name, name, 0, exp_avg_[i]});
    out.push_back({"exp_avg_sq." + name, name, 0, exp_avg_sq_[i]});
    if (params_[i].param.scalar_type() != torch::kFloat) {
      out.push_back({"master." + name, name, 0, master_[i]});
    }
  }
  return out;
}

void AdamW::RestoreStepCount(int64_t step) { step_ = step; }

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    bytes += (exp_avg_[i].numel() + exp_avg_sq_[i].numel()) * 4;
    if (params_[i].param.scalar_type() != torch::kFloat) bytes += master_[i].numel() * 4;
  }
  return bytes;
}

absl::Status AdamW::LoadStateDict(const std::map<std::string, torch::Tensor>& state) {
  // Validate everything before changing anything.
  FULCRUM_ASSIGN_OR_RETURN(const int64_t new_step, ValidateAdamWState(state, params_));
  torch::NoGradGuard no_grad;
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
