#include "trainer/models/init.h"

#include <ATen/CPUGeneratorImpl.h>

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "core/check.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::models {
namespace {

// The initial fp32 CPU value of the base parameter `name` with `sizes`;
// 2-D weights advance `generator`.
torch::Tensor InitialValue(const std::string& name, torch::IntArrayRef sizes, double std,
                           at::Generator& generator) {
  torch::Tensor values = torch::empty(sizes, torch::kFloat);
  // DeepSeek-V3's routing correction bias starts neutral, as in HF.
  if (absl::EndsWith(name, ".bias") || IsPersistentBuffer(name)) return values.zero_();
  if (values.dim() == 2) return values.normal_(0.0, std, generator);
  FULCRUM_CHECK(values.dim() == 1 && absl::StrContains(name, "norm"), "unexpected parameter ",
                name);
  return values.fill_(1.0);
}

// Persistent buffers are not parameters (no generator draw): zeros.
void ZeroPersistentBuffers(CausalLMImpl& model) {
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (IsPersistentBuffer(item.key())) item.value().zero_();
  }
}

}  // namespace

InitialValueStream::InitialValueStream(const ModelConfig& config, uint64_t seed)
    : std_(config.initializer_range),
      seed_(seed),
      generator_(at::detail::createCPUGenerator(seed)) {
  torch::NoGradGuard no_grad;
  CausalLM shapes(config, torch::TensorOptions().dtype(torch::kFloat).device(torch::kMeta));
  // HfStateDict's order: the parameters in named_parameters order, each
  // module's persistent buffers after its parameters (zeros: they do not
  // advance the generator).
  specs_ = HfStateDict(*shapes);
  for (size_t i = 0; i < specs_.size(); ++i) index_[specs_[i].name] = i;
}

torch::Tensor InitialValueStream::ValueOf(const std::string& name) {
  const auto it = index_.find(name);
  FULCRUM_CHECK(it != index_.end(), "no initial value for ", name);
  if (it->second < next_) {
    generator_ = at::detail::createCPUGenerator(seed_);
    next_ = 0;
  }
  torch::NoGradGuard no_grad;
  torch::Tensor value;
  while (next_ <= it->second) {
    const checkpoint::NamedTensor& spec = specs_[next_++];
    value = InitialValue(spec.name, spec.tensor.sizes(), std_, generator_);
  }
  return value;
}

void ForEachInitialValue(
    const ModelConfig& config, uint64_t seed,
    const std::function<void(const std::string& name, const torch::Tensor& value)>& sink) {
  InitialValueStream stream(config, seed);
  for (const checkpoint::NamedTensor& spec : stream.specs())
    sink(spec.name, stream.ValueOf(spec.name));
}

void InitializeWeights(CausalLMImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const ModelParallel& parallel = model.parallel();
  if (parallel.tp.active() || parallel.pipelined() || parallel.expert_sharded()) {
    // Drawn for the whole model; each held parameter takes its slice.
    std::map<std::string, ParamLayout> held;
    for (ParamLayout& layout : ParallelLayouts(model)) {
      if (!absl::StrContains(layout.name, "lora_")) held[layout.name] = std::move(layout);
    }
    ForEachInitialValue(model.config(), seed,
                        [&](const std::string& name, const torch::Tensor& value) {
                          const auto it = held.find(name);
                          if (it == held.end()) return;
                          it->second.param.copy_(NarrowToShard(it->second, value));
                          held.erase(it);
                        });
    FULCRUM_CHECK(held.empty(), "parameter ", held.empty() ? "" : held.begin()->first,
                  " is not in the whole model");
    ZeroPersistentBuffers(model);
    return;
  }
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const double std = model.config().initializer_range;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (absl::StrContains(item.key(), "lora_")) continue;
    torch::Tensor param = item.value();
    param.copy_(InitialValue(item.key(), param.sizes(), std, generator));
  }
  ZeroPersistentBuffers(model);
}

}  // namespace fulcrum::models
