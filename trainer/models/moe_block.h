// The mixture-of-experts feed-forward block of Mixtral, Qwen2-/Qwen3-MoE and
// DeepSeek-V2/V3: router -> each token's top-k experts (SwiGLU MLPs) ->
// weighted sum, plus the shared expert(s) every token passes through.
// Submodule names are the family's HF names (MoeStyle), so checkpoint keys,
// LoRA targets and PEFT keys need no mapping.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "trainer/models/mlp.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/moe_router.h"

namespace fulcrum::models {

class MoeBlockImpl : public torch::nn::Module {
 public:
  // Not under tp / ep yet (FULCRUM_CHECK; the recipe validation refuses them).
  MoeBlockImpl(const ModelConfig& config, const torch::TensorOptions& options,
               const ModelParallel& parallel = {});
  // x [B, T, hidden] -> [B, T, hidden]. Every expert runs, on zero rows when
  // no token chose it, so each expert weight always gets a gradient (zeros
  // then): AdamW then treats it as HF does, and the dp gradient buckets see
  // every parameter once per backward.
  torch::Tensor forward(const torch::Tensor& x);

  // The routing of the last forward (for load metrics and balancing losses).
  const Routing& last_routing() const { return last_routing_; }

  MoeRouter gate{nullptr};
  torch::nn::ModuleList experts{nullptr};  // num_experts x Mlp(expert_intermediate_size)
  Mlp shared{nullptr};  // "shared_experts" (DeepSeek) / "shared_expert" (Qwen2-MoE); or null
  lora::LoraLinear shared_expert_gate{nullptr};  // [1, hidden] Qwen2-MoE only; or null

 private:
  MoeConfig moe_;
  std::vector<Mlp> experts_;  // the entries of `experts`, so forward casts none
  Routing last_routing_;
};
TORCH_MODULE(MoeBlock);

}  // namespace fulcrum::models
