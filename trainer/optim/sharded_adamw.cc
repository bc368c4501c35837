#include "trainer/optim/sharded_adamw.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::optim {

ShardedAdamW::ShardedAdamW(std::vector<NamedParameter> params, parallel::GradientBuckets& buckets,
                           parallel::Communicator& dp, AdamWOptions options)
    : params_(std::move(params)),
      buckets_(buckets),
      dp_(dp),
      options_(options),
      owned_(buckets.OwnedSegments()) {
  torch::NoGradGuard no_grad;
  std::set<std::string> names;
  for (const NamedParameter& p : params_) {
    FULCRUM_CHECK(p.param.defined() && p.param.is_floating_point(), "parameter ", p.name,
                  " must be a defined floating-point tensor");
    FULCRUM_CHECK(p.param.is_contiguous(), "parameter ", p.name, " must be contiguous");
    FULCRUM_CHECK(names.insert(p.name).second, "parameter ", p.name, " given twice");
  }
  for (const auto& owned : owned_) {
    const parallel::BucketSegment& s = owned.segment;
    FULCRUM_CHECK(s.param_index < params_.size(), "bucket segment of parameter ", s.param_index,
                  " but only ", params_.size(), " parameters: not the buckets' parameters");
    const torch::Tensor& p = params_[s.param_index].param;
    FULCRUM_CHECK(s.param_offset + s.numel <= p.numel(), "bucket segment beyond parameter ",
                  params_[s.param_index].name, ": not the buckets' parameters");
    torch::Tensor slice = p.view(-1).narrow(0, s.param_offset, s.numel);
    // The fp32 param is its own master; a 16-bit one gets an fp32 copy.
    master_.push_back(p.scalar_type() == torch::kFloat ? slice : slice.to(torch::kFloat).clone());
    exp_avg_.push_back(torch::zeros_like(master_.back()));
    exp_avg_sq_.push_back(torch::zeros_like(master_.back()));
  }
}

void ShardedAdamW::Step(double lr, float grad_scale) {
  ++step_;
  torch::NoGradGuard no_grad;
  AdamWTensors tensors{master_, exp_avg_, exp_avg_sq_, {}, {}, {}};
  for (const auto& owned : owned_) {
    const parallel::BucketSegment& s = owned.segment;
    // A 16-bit gradient goes as it is: the update widens it as it reads it.
    tensors.grad.push_back(buckets_.BucketGrads(owned.bucket).narrow(0, s.bucket_offset, s.numel));
    tensors.decay.push_back(params_[s.param_index].decay);
    const torch::Tensor& p = params_[s.param_index].param;
    tensors.rounded.push_back(p.scalar_type() != torch::kFloat
                                  ? p.view(-1).narrow(0, s.param_offset, s.numel)
                                  : torch::Tensor());
  }
  AdamWUpdate(options_, lr, step_, grad_scale, tensors);
  if (buckets_.reduction() == parallel::GradReduction::kReduceScatter) {
    buckets_.AllGatherParameters();
  }
}

std::vector<torch::Tensor> ShardedAdamW::GatherFull(const std::vector<torch::Tensor>& segments) {
  torch::NoGradGuard no_grad;
  // Every element is owned by exactly one rank: a sum over dp of the
  // zero-filled tensors assembles them exactly. One flat buffer for all
  // params: [sum of numel] fp32.
  std::vector<int64_t> offset(params_.size() + 1, 0);
  for (size_t i = 0; i < params_.size(); ++i) offset[i + 1] = offset[i] + params_[i].param.numel();
  torch::Tensor flat = torch::zeros({offset.back()}, torch::kFloat);
  for (size_t i = 0; i < owned_.size(); ++i) {
    const parallel::BucketSegment& s = owned_[i].segment;
    flat.narrow(0, offset[s.param_index] + s.param_offset, s.numel).copy_(segments[i]);
  }
  const bool sharded = buckets_.reduction() == parallel::GradReduction::kReduceScatter;
  if (sharded && dp_.size() > 1) dp_.AllReduce(flat, parallel::ReduceOp::kSum);
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back(
        flat.narrow(0, offset[i], params_[i].param.numel()).view(params_[i].param.sizes()).clone());
  }
  return out;
}

std::vector<checkpoint::NamedTensor> ShardedAdamW::StateDict() {
  std::vector<checkpoint::NamedTensor> out;
  out.push_back({"step", torch::full({1}, step_, torch::TensorOptions().dtype(torch::kLong))});
  const std::vector<torch::Tensor> exp_avg = GatherFull(exp_avg_);
  const std::vector<torch::Tensor> exp_avg_sq = GatherFull(exp_avg_sq_);
  const std::vector<torch::Tensor> master = GatherFull(master_);
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({"exp_avg." + params_[i].name, exp_avg[i]});
    out.push_back({"exp_avg_sq." + params_[i].name, exp_avg_sq[i]});
    if (params_[i].param.scalar_type() != torch::kFloat) {
      out.push_back({"master." + params_[i].name, master[i]});
    }
  }
  return out;
}

absl::Status ShardedAdamW::LoadStateDict(const std::map<std::string, torch::Tensor>& state) {
  // Validate everything before changing anything.
  FULCRUM_ASSIGN_OR_RETURN(const int64_t new_step, ValidateAdamWState(state, params_));
  torch::NoGradGuard no_grad;
  step_ = new_step;
  for (size_t i = 0; i < owned_.size(); ++i) {
    const parallel::BucketSegment& s = owned_[i].segment;
    const NamedParameter& p = params_[s.param_index];
    auto segment_of = [&](const std::string& key) {
      return state.at(key).reshape({-1}).narrow(0, s.param_offset, s.numel);
    };
    exp_avg_[i].copy_(segment_of("exp_avg." + p.name));
    exp_avg_sq_[i].copy_(segment_of("exp_avg_sq." + p.name));
    if (p.param.scalar_type() != torch::kFloat) master_[i].copy_(segment_of("master." + p.name));
  }
  // As AdamW: a 16-bit param takes its master's values (whole, no comm needed).
  for (NamedParameter& p : params_) {
    if (p.param.scalar_type() != torch::kFloat) p.param.copy_(state.at("master." + p.name));
  }
  return absl::OkStatus();
}

std::vector<LocalStateShard> ShardedAdamW::LocalState() {
  std::vector<LocalStateShard> out;
  for (size_t i = 0; i < owned_.size(); ++i) {
    const parallel::BucketSegment& s = owned_[i].segment;
    const std::string& name = params_[s.param_index].name;
    out.push_back({"exp_avg." + name, name, s.param_offset, exp_avg_[i]});
    out.push_back({"exp_avg_sq." + name, name, s.param_offset, exp_avg_sq_[i]});
    if (params_[s.param_index].param.scalar_type() != torch::kFloat) {
      out.push_back({"master." + name, name, s.param_offset, master_[i]});
    }
  }
  return out;
}

void ShardedAdamW::RestoreStepCount(int64_t step) { step_ = step; }

int64_t ShardedAdamW::state_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < owned_.size(); ++i) {
    bytes += (exp_avg_[i].numel() + exp_avg_sq_[i].numel()) * 4;
    if (params_[owned_[i].segment.param_index].param.scalar_type() != torch::kFloat) {
      bytes += master_[i].numel() * 4;
    }
  }
  return bytes;
}

}  // namespace fulcrum::optim
