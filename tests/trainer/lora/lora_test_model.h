// A tiny module tree of LoraLinears shaped like a decoder, for LoRA tests:
// layers.{0,1}.{q_proj [6,4], v_proj [6,4] with bias, up_proj [8,4]}, lm_head [5,4].
#pragma once

#include <torch/torch.h>

#include "trainer/lora/lora_linear.h"

namespace fulcrum::lora::testing {

struct TinyBlockImpl : torch::nn::Module {
  TinyBlockImpl() {
    const auto f = torch::TensorOptions().dtype(torch::kFloat);
    q_proj = register_module("q_proj", LoraLinear(4, 6, false, f));
    v_proj = register_module("v_proj", LoraLinear(4, 6, true, f));
    up_proj = register_module("up_proj", LoraLinear(4, 8, false, f));
  }
  torch::Tensor forward(const torch::Tensor& x) {  // [n, 4] -> [n, 4]
    return x + q_proj(x).narrow(-1, 0, 4) * v_proj(x).narrow(-1, 2, 4) +
           up_proj(x).narrow(-1, 4, 4);
  }
  LoraLinear q_proj{nullptr}, v_proj{nullptr}, up_proj{nullptr};
};
TORCH_MODULE(TinyBlock);

struct TinyModel : torch::nn::Module {
  explicit TinyModel(int seed = 0) {
    norm = register_parameter("norm", torch::ones({4}));
    layers = register_module("layers", torch::nn::ModuleList(TinyBlock(), TinyBlock()));
    lm_head = register_module("lm_head", LoraLinear(4, 5, false, torch::kFloat));
    torch::NoGradGuard no_grad;
    torch::manual_seed(seed);
    for (auto& p : parameters()) p.normal_(0, 0.5);
  }
  torch::Tensor forward(torch::Tensor x) {  // [n, 4] -> [n, 5]
    for (const auto& layer : *layers) x = layer->as<TinyBlockImpl>()->forward(x);
    return lm_head(x * norm);
  }
  torch::Tensor norm;
  torch::nn::ModuleList layers{nullptr};
  LoraLinear lm_head{nullptr};
};

}  // namespace fulcrum::lora::testing
