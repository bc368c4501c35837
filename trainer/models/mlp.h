// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#pragma once

#include <torch/torch.h>

#include <string>

#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::models {

// The module names of a SwiGLU MLP's projections: HF's gate/up/down_proj, or
// Mixtral's experts' w1 (gate) / w3 (up) / w2 (down).
struct SwiGluNames {
  std::string gate = "gate_proj", up = "up_proj", down = "down_proj";
};

class MlpImpl : public torch::nn::Module {
 public:
  // Under tp gate/up are column-parallel, down row-parallel (ffn/tp per rank).
  MlpImpl(const ModelConfig& config, const torch::TensorOptions& options,
          const ModelParallel& parallel = {});
  // Any width (MoE experts and shared experts: moe_intermediate_size, ...),
  // any projection names; tp roles as above. With region_by_caller (MoE
  // blocks, see LinearParallel) under tp, forward takes x already in the tp
  // region, full sequence also under sp, and returns this rank's partial sum.
  MlpImpl(int64_t hidden_size, int64_t intermediate_size, bool bias,
          const torch::TensorOptions& options, const ModelParallel& parallel = {},
          const SwiGluNames& names = {}, bool region_by_caller = false);
  // x [B, T, hidden] -> [B, T, hidden] (under sp [B, T/tp, hidden] both)
  torch::Tensor forward(const torch::Tensor& x);
  // forward(x.y) for x an RMSNorm's output: gate and up keep the norm's
  // input and statistics instead of x.y (unsharded LoraLinear::ForwardNormed;
  // under tp one node, lora/column_group.h).
  torch::Tensor forward(const RmsNormOutput& x);

  // Unsharded shapes; under tp intermediate -> intermediate/tp.
  lora::LoraLinear gate_proj{nullptr};  // [intermediate, hidden]
  lora::LoraLinear up_proj{nullptr};    // [intermediate, hidden]
  lora::LoraLinear down_proj{nullptr};  // [hidden, intermediate]
};
TORCH_MODULE(Mlp);

}  // namespace fulcrum::models
