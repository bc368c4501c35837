// Expert load balancing for MoE training: the router's auxiliary losses, the
// DeepSeek-V3 aux-loss-free bias update, and per-step expert loads.
//
// Normalisation (all of them 1 x coeff when every expert gets the same load
// and the same mean score): with N tokens, E experts, top-k,
//   f_e = E * (tokens routed to e) / (N * k)    P_e = mean over tokens of s_e
//   switch  : coeff * sum_e f_e P_e over the micro-batch's tokens (Switch
//             Transformer / Megatron's switch loss; HF Mixtral's
//             load_balancing_loss_func is k times this over all layers' tokens)
//   seq     : the same per sequence (row), averaged over rows (DeepSeek-V2/V3's
//             sequence-wise balance loss, alpha = coeff)
//   z-loss  : z_coeff * mean over tokens of logsumexp(router logits)^2 (ST-MoE)
// s_e is the router's score: softmax scores as they are, sigmoid scores
// (DeepSeek-V3) divided by their sum per token.
//
// Defines: MoeBalanceOptions, ParseAuxLoss, RouterBalanceLoss,
// AttachAuxLossGradient, ExpertLoads, UpdateCorrectionBias.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/models/moe_router.h"

namespace fulcrum::models {

enum class AuxLoss { kNone, kSwitch, kSequence };

// "none" | "switch" | "seq"; anything else is an error listing them.
absl::StatusOr<AuxLoss> ParseAuxLoss(const std::string& name);

struct MoeBalanceOptions {
  AuxLoss aux_loss = AuxLoss::kNone;
  double aux_loss_coeff = 0.0;
  double z_loss_coeff = 0.0;
  // The factor on each micro-batch's balance loss in the training objective:
  // 1 / (micro-batches per optimizer step over all dp ranks), so the
  // objective adds the mean over micro-batches, whatever the layout.
  double micro_batch_weight = 1.0;
  bool active() const {
    return (aux_loss != AuxLoss::kNone && aux_loss_coeff > 0) || z_loss_coeff > 0;
  }
};

// The balance terms of one MoE layer for one micro-batch (coefficients
// applied, micro_batch_weight not): a differentiable 0-dim fp32 tensor, or
// undefined when options are inactive. `rows`: the micro-batch's sequences
// (routing covers rows x T tokens, row-major). `sigmoid_scores`: the family
// scores with a sigmoid (their per-token sum is not 1).
torch::Tensor RouterBalanceLoss(const Routing& routing, int64_t num_experts, int64_t rows,
                                bool sigmoid_scores, const MoeBalanceOptions& options);

// Identity on `output` in forward; in backward also sends `weight` as the
// gradient of `loss` (Megatron's aux-loss auto-scaler): the balance loss
// joins the objective without travelling to the loss function, so it works
// wherever the layer runs (any pipeline stage).
torch::Tensor AttachAuxLossGradient(const torch::Tensor& output, const torch::Tensor& loss,
                                    double weight);

// Tokens routed to each expert: [E] float64 (expert_ids [N, k]).
torch::Tensor ExpertLoads(const torch::Tensor& expert_ids, int64_t num_experts);

// DeepSeek-V3's aux-loss-free balancing: bias_e += rate * sign(mean load -
// load_e), in place (bias [E] fp32, loads [E] summed over the whole step).
void UpdateCorrectionBias(torch::Tensor& bias, const torch::Tensor& loads, double rate);

}  // namespace fulcrum::models
