#include "trainer/optim/grouped_optimizer.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::optim {
namespace {

constexpr const char* kPerParameterPrefixes[] = {"exp_avg_sq.", "exp_avg.", "master."};

}  // namespace

GroupedOptimizer::GroupedOptimizer(std::vector<std::unique_ptr<Optimizer>> groups)
    : groups_(std::move(groups)) {
  FULCRUM_CHECK(!groups_.empty(), "GroupedOptimizer needs at least one group");
  for (size_t g = 0; g < groups_.size(); ++g) {
    FULCRUM_CHECK(groups_[g] != nullptr, "group ", g, " is null");
    for (const NamedParameter& p : groups_[g]->parameters()) {
      FULCRUM_CHECK(group_of_.emplace(p.name, g).second, "parameter ", p.name,
                    " is in two optimizer groups");
      params_.push_back(p);
    }
  }
}

void GroupedOptimizer::Step(double lr, float grad_scale) {
  for (auto& group : groups_) group->Step(lr, grad_scale);
}

int64_t GroupedOptimizer::step_count() const { return groups_.front()->step_count(); }

std::vector<checkpoint::NamedTensor> GroupedOptimizer::StateDict() {
  std::vector<checkpoint::NamedTensor> out;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (checkpoint::NamedTensor& entry : groups_[g]->StateDict()) {
      if (g > 0 && entry.name == "step") continue;
      out.push_back(std::move(entry));
    }
  }
  return out;
}

absl::Status GroupedOptimizer::LoadStateDict(const std::map<std::string, torch::Tensor>& state) {
  std::vector<std::map<std::string, torch::Tensor>> parts(groups_.size());
  for (const auto& [key, tensor] : state) {
    if (key == "step") {
      for (auto& part : parts) part[key] = tensor;
      continue;
    }
    std::string name;
    for (const char* prefix : kPerParameterPrefixes) {
      if (absl::StartsWith(key, prefix)) {
        name = key.substr(std::string(prefix).size());
        break;
      }
    }
    auto it = group_of_.find(name);
    if (it == group_of_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: unexpected key '", key, "' (no such parameter)"));
    }
    parts[it->second][key] = tensor;
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    FULCRUM_RETURN_IF_ERROR(groups_[g]->LoadStateDict(parts[g]));
  }
  return absl::OkStatus();
}

std::vector<LocalStateShard> GroupedOptimizer::LocalState() {
  std::vector<LocalStateShard> out;
  for (const auto& group : groups_) {
    for (LocalStateShard& shard : group->LocalState()) out.push_back(std::move(shard));
  }
  return out;
}

void GroupedOptimizer::RestoreStepCount(int64_t step) {
  for (const auto& group : groups_) group->RestoreStepCount(step);
}

int64_t GroupedOptimizer::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& group : groups_) bytes += group->state_bytes();
  return bytes;
}

}  // namespace fulcrum::optim
