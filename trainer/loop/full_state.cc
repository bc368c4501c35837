#include "trainer/loop/full_state.h"

#include "absl/strings/match.h"
#include "core/check.h"

namespace fulcrum::loop {
namespace {

constexpr const char* kPerParameterPrefixes[] = {"exp_avg_sq.", "exp_avg.", "master."};

// The parameter an optimizer-state key belongs to, or nullptr ("step").
const models::ParamLayout* LayoutOfStateKey(const std::string& key, const LayoutIndex& layouts) {
  for (const char* prefix : kPerParameterPrefixes) {
    if (absl::StartsWith(key, prefix)) {
      auto it = layouts.find(key.substr(std::string(prefix).size()));
      return it == layouts.end() ? nullptr : it->second;
    }
  }
  return nullptr;
}

bool IsPerParameterKey(const std::string& key) {
  for (const char* prefix : kPerParameterPrefixes) {
    if (absl::StartsWith(key, prefix)) return true;
  }
  return false;
}

}  // namespace

LayoutIndex IndexLayouts(const std::vector<optim::NamedParameter>& params,
                         const std::vector<models::ParamLayout>& layouts) {
  std::map<std::string, const models::ParamLayout*> by_name;
  for (const models::ParamLayout& layout : layouts) by_name[layout.name] = &layout;
  LayoutIndex index;
  for (const optim::NamedParameter& p : params) {
    auto it = by_name.find(p.name);
    FULCRUM_CHECK(it != by_name.end(), "trainable parameter ", p.name, " has no parallel layout");
    index[p.name] = it->second;
  }
  return index;
}

std::vector<checkpoint::NamedTensor> GatherTrainables(
    const std::vector<optim::NamedParameter>& params, const LayoutIndex& layouts) {
  std::vector<checkpoint::NamedTensor> out;
  out.reserve(params.size());
  for (const optim::NamedParameter& p : params) {
    out.push_back({p.name, models::GatherFull(*layouts.at(p.name), p.param.detach())});
  }
  return out;
}

std::vector<checkpoint::NamedTensor> GatherOptimizerState(
    std::vector<checkpoint::NamedTensor> state, const LayoutIndex& layouts) {
  for (checkpoint::NamedTensor& entry : state) {
    if (const models::ParamLayout* layout = LayoutOfStateKey(entry.name, layouts)) {
      entry.tensor = models::GatherFull(*layout, entry.tensor);
    }
  }
  return state;
}

std::map<std::string, torch::Tensor> StateOfParameters(
    const std::map<std::string, torch::Tensor>& full, const LayoutIndex& layouts) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [key, tensor] : full) {
    if (!IsPerParameterKey(key) || LayoutOfStateKey(key, layouts) != nullptr) out[key] = tensor;
  }
  return out;
}

std::vector<checkpoint::NamedTensor> RoutedExpertEntries(std::vector<checkpoint::NamedTensor> all,
                                                         const LayoutIndex& layouts) {
  std::vector<checkpoint::NamedTensor> out;
  for (checkpoint::NamedTensor& entry : all) {
    auto it = layouts.find(entry.name);
    const models::ParamLayout* layout =
        it != layouts.end() ? it->second : LayoutOfStateKey(entry.name, layouts);
    if (layout != nullptr && layout->routed_expert) out.push_back(std::move(entry));
  }
  return out;
}

std::map<std::string, torch::Tensor> ShardOptimizerState(
    const std::map<std::string, torch::Tensor>& full, const LayoutIndex& layouts) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [key, tensor] : full) {
    const models::ParamLayout* layout = LayoutOfStateKey(key, layouts);
    out[key] = layout != nullptr ? models::NarrowToShard(*layout, tensor).contiguous() : tensor;
  }
  return out;
}

}  // namespace fulcrum::loop
