// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#pragma once

#include <torch/torch.h>

#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& config, const torch::TensorOptions& options);
  // x [B, T, hidden] -> [B, T, hidden]
  torch::Tensor forward(const torch::Tensor& x);

  lora::LoraLinear gate_proj{nullptr};  // [intermediate, hidden]
  lora::LoraLinear up_proj{nullptr};    // [intermediate, hidden]
  lora::LoraLinear down_proj{nullptr};  // [hidden, intermediate]
};
TORCH_MODULE(Mlp);

}  // namespace fulcrum::models
