#include "trainer/models/mlp.h"

namespace fulcrum::models {

MlpImpl::MlpImpl(const ModelConfig& config, const torch::TensorOptions& options,
                 const ModelParallel& parallel) {
  const int64_t hidden = config.hidden_size, inter = config.intermediate_size;
  gate_proj =
      register_module("gate_proj", lora::LoraLinear(hidden, inter, config.mlp_bias, options,
                                                    ProjectionParallel("gate_proj", parallel)));
  up_proj = register_module("up_proj", lora::LoraLinear(hidden, inter, config.mlp_bias, options,
                                                        ProjectionParallel("up_proj", parallel)));
  down_proj =
      register_module("down_proj", lora::LoraLinear(inter, hidden, config.mlp_bias, options,
                                                    ProjectionParallel("down_proj", parallel)));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

}  // namespace fulcrum::models
