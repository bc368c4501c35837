// RMSNorm as HF Llama/Qwen compute it: statistics in fp32, the normalised
// activations cast back to the input dtype before the weight multiplies them.
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

class RMSNormImpl : public torch::nn::Module {
 public:
  // weight [dim], created uninitialised with `options`.
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  // x [..., dim] -> [..., dim] in x's dtype (x's dtype times the weight's).
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [dim]

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace fulcrum::models
