#include "trainer/models/init.h"

#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "core/check.h"

namespace fulcrum::models {

void InitializeWeights(CausalLMImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const double std = model.config().initializer_range;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor param = item.value();
    if (absl::StrContains(name, "lora_")) continue;
    if (absl::EndsWith(name, ".bias")) {
      param.zero_();
    } else if (param.dim() == 2) {
      torch::Tensor values = torch::empty(param.sizes(), torch::kFloat);
      values.normal_(0.0, std, generator);
      param.copy_(values);
    } else {
      FULCRUM_CHECK(param.dim() == 1 && absl::StrContains(name, "norm"), "unexpected parameter ",
                    name);
      param.fill_(1.0);
    }
  }
}

}  // namespace fulcrum::models
