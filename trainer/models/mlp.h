// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#pragma once

#include <torch/torch.h>

#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"

namespace fulcrum::models {

class MlpImpl : public torch::nn::Module {
 public:
  // Under tp gate/up are column-parallel, down row-parallel (ffn/tp per rank).
  MlpImpl(const ModelConfig& config, const torch::TensorOptions& options,
          const ModelParallel& parallel = {});
  // x [B, T, hidden] -> [B, T, hidden] (under sp [B, T/tp, hidden] both)
  torch::Tensor forward(const torch::Tensor& x);

  // Unsharded shapes; under tp intermediate -> intermediate/tp.
  lora::LoraLinear gate_proj{nullptr};  // [intermediate, hidden]
  lora::LoraLinear up_proj{nullptr};    // [intermediate, hidden]
  lora::LoraLinear down_proj{nullptr};  // [hidden, intermediate]
};
TORCH_MODULE(Mlp);

}  // namespace fulcrum::models
