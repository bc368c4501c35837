#include "trainer/lora/apply_lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace fulcrum::lora {
namespace {

constexpr char kAllLinear[] = "all-linear";
constexpr char kLmHead[] = "lm_head";
// MoE routers: adapted only when named (changing the routing is a choice).
constexpr char kRouter[] = "gate";

}  // namespace

std::vector<LoraLayer> LoraLayers(torch::nn::Module& model) {
  std::vector<LoraLayer> out;
  // NOTE: include_self would need `model` to live in a shared_ptr.
  if (auto* self = dynamic_cast<LoraLinearImpl*>(&model)) out.push_back(LoraLayer{"", self});
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    auto* layer = dynamic_cast<LoraLinearImpl*>(item.value().get());
    if (layer != nullptr) out.push_back(LoraLayer{item.key(), layer});
  }
  return out;
}

std::string LastComponent(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

absl::Status ValidateLoraSpec(const LoraSpec& spec) {
  if (spec.rank <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("finetune.lora.rank: must be > 0, got ", spec.rank));
  }
  if (!(spec.alpha > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("finetune.lora.alpha: must be > 0, got ", spec.alpha));
  }
  if (!(spec.dropout >= 0.0 && spec.dropout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("finetune.lora.dropout: must be in [0, 1), got ", spec.dropout));
  }
  return absl::OkStatus();
}

void FreezeAllButAdapters(torch::nn::Module& model) {
  for (auto& param : model.parameters(/*recurse=*/true)) param.set_requires_grad(false);
  for (LoraLayer& l : LoraLayers(model)) {
    if (!l.layer->has_adapter()) continue;
    l.layer->lora_a().set_requires_grad(true);
    l.layer->lora_b().set_requires_grad(true);
  }
}

uint64_t AdapterSeed(uint64_t seed, const std::string& module_path) {
  uint64_t hash = 14695981039346656037ULL;  // FNV-1a 64 offset basis
  for (const unsigned char c : module_path) {
    hash ^= c;
    hash *= 1099511628211ULL;  // FNV prime
  }
  // splitmix64 finaliser of the mix, so nearby seeds give unrelated streams.
  uint64_t z = hash ^ (seed + 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

absl::StatusOr<int64_t> ApplyLoraWhere(torch::nn::Module& model, const LoraSpec& spec,
                                       const std::function<bool(const std::string&)>& select,
                                       std::optional<uint64_t> seed) {
  FULCRUM_RETURN_IF_ERROR(ValidateLoraSpec(spec));
  std::vector<LoraLayer> chosen;
  for (LoraLayer& l : LoraLayers(model)) {
    if (!select(l.path)) continue;
    if (l.layer->has_adapter()) {
      return absl::FailedPreconditionError(
          absl::StrCat("LoRA: layer '", l.path, "' already has an adapter"));
    }
    chosen.push_back(std::move(l));
  }
  for (LoraLayer& l : chosen) {
    l.layer->AttachAdapter(
        spec, seed ? at::detail::createCPUGenerator(AdapterSeed(*seed, l.path)) : at::Generator());
  }
  FreezeAllButAdapters(model);
  return static_cast<int64_t>(chosen.size());
}

absl::StatusOr<int64_t> ApplyLora(torch::nn::Module& model, const LoraOptions& options) {
  if (options.targets.empty()) {
    return absl::InvalidArgumentError("finetune.lora.targets: empty (name layers, or all-linear)");
  }
  std::set<std::string> available;
  for (const LoraLayer& l : LoraLayers(model)) available.insert(LastComponent(l.path));
  for (const std::string& t : options.targets) {
    if (t != kAllLinear && available.count(t) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "finetune.lora.targets: '", t,
          "' matches no linear layer (available: ", absl::StrJoin(available, ", "), ")"));
    }
  }
  return ApplyLoraWhere(
      model, options.spec,
      [&](const std::string& path) { return TargetsSelect(options.targets, path); }, options.seed);
}

bool TargetsSelect(const std::vector<std::string>& targets, const std::string& path) {
  const std::string name = LastComponent(path);
  return std::any_of(targets.begin(), targets.end(), [&](const std::string& t) {
    return t == name || (t == kAllLinear && name != kLmHead && name != kRouter);
  });
}

void MergeLora(torch::nn::Module& model) {
  for (LoraLayer& l : LoraLayers(model)) l.layer->MergeAdapter();
}

}  // namespace fulcrum::lora
