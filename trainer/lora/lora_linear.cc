#include "trainer/lora/lora_linear.h"

#include <cmath>

#include "core/check.h"

namespace fulcrum::lora {

double LoraSpec::Scaling() const {
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool has_bias,
                               const torch::TensorOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}, options));
  if (has_bias) bias = register_parameter("bias", torch::empty({out_features}, options));
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (!has_adapter()) return y;
  torch::Tensor h = dropout_ > 0.0 ? torch::dropout(x, dropout_, is_training()) : x;
  h = torch::matmul(torch::matmul(h, lora_a_.t()), lora_b_.t());
  return y.add_(h, scaling_);
}

void LoraLinearImpl::AttachAdapter(const LoraSpec& spec) {
  FULCRUM_CHECK(!has_adapter(), "adapter attached twice");
  FULCRUM_CHECK(spec.rank > 0, "rank=", spec.rank);
  const auto options = weight.options().requires_grad(true);
  torch::Tensor a = torch::empty({spec.rank, in_features_}, options);
  {
    torch::NoGradGuard no_grad;
    // kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)).
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
    a.uniform_(-bound, bound);
  }
  torch::Tensor b = torch::zeros({out_features_, spec.rank}, options);
  lora_a_ = register_module("lora_A", AdapterMatrix(a))->weight;
  lora_b_ = register_module("lora_B", AdapterMatrix(b))->weight;
  scaling_ = spec.Scaling();
  dropout_ = spec.dropout;
}

void LoraLinearImpl::MergeAdapter() {
  if (!has_adapter()) return;
  {
    torch::NoGradGuard no_grad;
    weight.add_(torch::matmul(lora_b_.to(torch::kFloat), lora_a_.to(torch::kFloat))
                    .mul_(scaling_)
                    .to(weight.scalar_type()));
  }
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_a_ = torch::Tensor();
  lora_b_ = torch::Tensor();
}

}  // namespace fulcrum::lora
