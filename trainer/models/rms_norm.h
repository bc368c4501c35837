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
  // true (train.recompute: selective): training forwards keep only x for
  // backward and recompute the fp32 statistics and the normalised
  // activations there (recompute.h).
  void SetRecompute(bool recompute) { recompute_ = recompute; }

  torch::Tensor weight;  // [dim]

 private:
  torch::Tensor Normalize(const torch::Tensor& x);

  double eps_;
  bool recompute_ = false;
};
TORCH_MODULE(RMSNorm);

}  // namespace fulcrum::models
