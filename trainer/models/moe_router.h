// The MoE router ("gate" in every HF family): scores every expert for every
// token and picks each token's top-k experts with the family's rule
// (MoeConfig: softmax or sigmoid scores, plain or group-limited top-k, the
// DeepSeek-V3 correction bias for the choice only, renormalisation and the
// routed scaling factor).
//
// Defines: Routing, RouteTokens, MoeRouter.
#pragma once

#include <torch/torch.h>

#include "trainer/lora/lora_linear.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {

struct Routing {
  torch::Tensor expert_ids;  // [N, k] int64
  // [N, k] fp32: the weight of each chosen expert's output (renormalised and
  // scaled per MoeConfig); differentiable with respect to the router logits.
  torch::Tensor weights;
  torch::Tensor scores;  // [N, E] fp32 softmax / sigmoid scores (for the auxiliary losses)
  torch::Tensor logits;  // [N, E] fp32 router logits (for the z-loss)
};

// logits [N, E] (fp32) -> the routing of `moe`. correction_bias [E] fp32
// (undefined unless moe.correction_bias) shifts the scores used to choose
// experts, never the weights. Ties cannot decide a fixture (its margins are
// > 1e-4), but the choice is deterministic: torch::topk order.
Routing RouteTokens(const torch::Tensor& logits, const MoeConfig& moe,
                    const torch::Tensor& correction_bias = {});

// The router is a linear layer [E, hidden] (parameter "weight", HF's gate),
// so LoRA adapts it when the recipe names it ("gate" in
// finetune.lora.targets); all-linear leaves it frozen: changing the routing
// is a choice, not a default.
class MoeRouterImpl : public lora::LoraLinearImpl {
 public:
  MoeRouterImpl(int64_t hidden_size, const MoeConfig& moe, const torch::TensorOptions& options);
  // x [N, hidden] -> Routing (logits computed as HF does: DeepSeek in fp32,
  // adapter included; Mixtral / Qwen in the model dtype).
  Routing forward(const torch::Tensor& x);

  // [E] fp32 persistent buffer "e_score_correction_bias" (DeepSeek-V3 only):
  // loaded and exported with the weights, never trained by the optimizer
  // (the aux-loss-free balancing updates it between steps).
  torch::Tensor e_score_correction_bias;

 private:
  MoeConfig moe_;
};
TORCH_MODULE(MoeRouter);

}  // namespace fulcrum::models
