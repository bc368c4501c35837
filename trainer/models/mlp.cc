#include "trainer/models/mlp.h"

#include <vector>

#include "parallel/tensor/tensor_parallel.h"
#include "trainer/lora/column_group.h"

namespace fulcrum::models {

MlpImpl::MlpImpl(const ModelConfig& config, const torch::TensorOptions& options,
                 const ModelParallel& parallel)
    : MlpImpl(config.hidden_size, config.intermediate_size, config.mlp_bias, options, parallel) {}

MlpImpl::MlpImpl(int64_t hidden, int64_t inter, bool bias, const torch::TensorOptions& options,
                 const ModelParallel& parallel, const SwiGluNames& names, bool region_by_caller) {
  // The tp role follows the HF role (gate/up column, down row), whatever the
  // name. gate and up share one entry into the tp region (forward).
  const auto role = [&](const char* hf_name) {
    lora::LinearParallel out = ProjectionParallel(hf_name, parallel);
    out.input_in_region = true;
    out.output_partial = region_by_caller;
    return out;
  };
  gate_proj = register_module(names.gate,
                              lora::LoraLinear(hidden, inter, bias, options, role("gate_proj")));
  up_proj =
      register_module(names.up, lora::LoraLinear(hidden, inter, bias, options, role("up_proj")));
  down_proj = register_module(names.down,
                              lora::LoraLinear(inter, hidden, bias, options, role("down_proj")));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  // A caller that reduces down's partial sum also entered the region (MoE).
  const bool caller_region = down_proj->parallel().output_partial;
  const torch::Tensor x_in =
      gate_proj->sharded() && !caller_region
          ? parallel::tensor::ColumnParallelInput(x, gate_proj->parallel().tp)
          : x;
  return down_proj->ForwardSwiGlu(gate_proj->forward(x_in), up_proj->forward(x_in));
}

torch::Tensor MlpImpl::forward(const RmsNormOutput& x) {
  if (down_proj->parallel().output_partial) return forward(x.y);
  const std::vector<torch::Tensor> gate_up =
      lora::ForwardColumnGroup(x, {gate_proj.get(), up_proj.get()});
  return down_proj->ForwardSwiGlu(gate_up[0], gate_up[1]);
}

}  // namespace fulcrum::models
