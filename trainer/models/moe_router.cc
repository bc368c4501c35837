#include "trainer/models/moe_router.h"

#include <algorithm>

#include "core/check.h"

namespace fulcrum::models {
namespace {

// [N, E] -> [N, E] with the experts of all but each token's topk_group best
// groups set to 0.0 (HF masks with 0.0, not -inf, in V2 and V3 alike).
// group_scores [N, n_group].
torch::Tensor MaskDroppedGroups(const torch::Tensor& choice, const torch::Tensor& group_scores,
                                const MoeConfig& moe) {
  const int64_t n = choice.size(0);
  const int64_t per_group = moe.num_experts / moe.n_group;
  const torch::Tensor group_idx =
      std::get<1>(torch::topk(group_scores, moe.topk_group, /*dim=*/-1, /*largest=*/true,
                              /*sorted=*/false));  // [N, topk_group]
  const torch::Tensor group_keep =
      torch::zeros_like(group_scores, torch::kBool).scatter_(1, group_idx, true);  // [N, G]
  const torch::Tensor expert_keep =
      group_keep.unsqueeze(-1).expand({n, moe.n_group, per_group}).reshape({n, moe.num_experts});
  return choice.masked_fill(expert_keep.logical_not(), 0.0);
}

// The expert choice [N, k] of each topk_method (no gradient: indices only).
torch::Tensor ChooseExperts(const torch::Tensor& scores, const MoeConfig& moe,
                            const torch::Tensor& correction_bias) {
  torch::NoGradGuard no_grad;
  const int64_t n = scores.size(0);
  const int64_t k = moe.experts_per_token;
  torch::Tensor choice = scores;
  if (moe.topk_method == "group_limited_greedy") {
    // DeepSeek-V2: a group's score is its best expert's score.
    const torch::Tensor group_scores =
        std::get<0>(scores.view({n, moe.n_group, -1}).max(/*dim=*/-1));  // [N, G]
    choice = MaskDroppedGroups(scores, group_scores, moe);
  } else if (moe.topk_method == "noaux_tc") {
    // DeepSeek-V3: the bias shifts the choice only; a group's score is the sum
    // of its two best biased scores.
    FULCRUM_CHECK(moe.num_experts / moe.n_group >= 2,
                  "noaux_tc needs >= 2 experts per group: num_experts=", moe.num_experts,
                  " n_group=", moe.n_group);
    choice = correction_bias.defined() ? scores + correction_bias.to(scores.dtype()).unsqueeze(0)
                                       : scores;
    const torch::Tensor group_scores =
        std::get<0>(torch::topk(choice.view({n, moe.n_group, -1}), 2, /*dim=*/-1))
            .sum(-1);  // [N, G]
    choice = MaskDroppedGroups(choice, group_scores, moe);
  } else {
    FULCRUM_CHECK(moe.topk_method == "greedy", "unknown topk_method ", moe.topk_method);
  }
  // Mixtral / Qwen use a sorted top-k, DeepSeek an unsorted one; only the
  // order of the k choices differs (the sum over them is the same).
  return std::get<1>(torch::topk(choice, k, /*dim=*/-1, /*largest=*/true, /*sorted=*/true));
}

}  // namespace

Routing RouteTokens(const torch::Tensor& logits, const MoeConfig& moe,
                    const torch::Tensor& correction_bias) {
  FULCRUM_CHECK(logits.dim() == 2 && logits.size(1) == moe.num_experts,
                "router logits must be [N, ", moe.num_experts, "]");
  FULCRUM_CHECK(moe.experts_per_token > 0 && moe.experts_per_token <= moe.num_experts,
                "experts_per_token=", moe.experts_per_token, " num_experts=", moe.num_experts);
  FULCRUM_CHECK(moe.n_group > 0 && moe.num_experts % moe.n_group == 0 && moe.topk_group > 0 &&
                    moe.topk_group <= moe.n_group,
                "n_group=", moe.n_group, " topk_group=", moe.topk_group,
                " num_experts=", moe.num_experts);
  FULCRUM_CHECK(!correction_bias.defined() || correction_bias.numel() == moe.num_experts,
                "e_score_correction_bias must be [", moe.num_experts, "]");

  Routing routing;
  routing.logits = logits.to(torch::kFloat32);
  if (moe.scoring == "sigmoid") {
    routing.scores = torch::sigmoid(routing.logits);
  } else {
    FULCRUM_CHECK(moe.scoring == "softmax", "unknown scoring_func ", moe.scoring);
    routing.scores = torch::softmax(routing.logits, /*dim=*/-1);
  }
  routing.expert_ids = ChooseExperts(routing.scores, moe, correction_bias);  // [N, k]
  // The unbiased scores of the chosen experts (differentiable).
  torch::Tensor weights = routing.scores.gather(1, routing.expert_ids);  // [N, k]
  if (moe.normalize_weights) {
    // HF DeepSeek-V3 (the sigmoid family) adds 1e-20 to the denominator;
    // Mixtral and Qwen-MoE divide by the plain sum.
    torch::Tensor denominator = weights.sum(-1, /*keepdim=*/true);
    if (moe.scoring == "sigmoid") denominator = denominator + 1e-20;
    weights = weights / denominator;
  }
  if (moe.routed_scaling_factor != 1.0) weights = weights * moe.routed_scaling_factor;
  routing.weights = weights;
  return routing;
}

MoeRouterImpl::MoeRouterImpl(int64_t hidden_size, const MoeConfig& moe,
                             const torch::TensorOptions& options)
    : lora::LoraLinearImpl(hidden_size, std::max<int64_t>(moe.num_experts, 1), /*bias=*/false,
                           options),
      moe_(moe) {
  FULCRUM_CHECK(moe.enabled(), "MoeRouter built for a dense config");
  if (moe.correction_bias) {
    // fp32 whatever the model dtype (HF keeps the buffer in fp32 for its
    // tiny updates); persistent, so it is loaded and exported.
    e_score_correction_bias = register_buffer(
        "e_score_correction_bias", torch::zeros({moe.num_experts}, options.dtype(torch::kFloat32)));
  }
}

Routing MoeRouterImpl::forward(const torch::Tensor& x) {
  FULCRUM_CHECK(x.dim() == 2 && x.size(1) == weight.size(1), "router input must be [N, ",
                weight.size(1), "]");
  torch::Tensor logits;  // [N, E]
  if (moe_.style == MoeStyle::kDeepSeek) {
    // DeepSeek's gate runs the projection itself in fp32.
    const torch::Tensor x32 = x.to(torch::kFloat32);
    logits = torch::nn::functional::linear(x32, weight.to(torch::kFloat32));
    if (has_adapter()) logits = logits + AdapterDelta(x32);
  } else {
    // Mixtral / Qwen: nn.Linear in the model dtype, softmax in fp32.
    logits = lora::LoraLinearImpl::forward(x);
  }
  return RouteTokens(logits, moe_, e_score_correction_bias);
}

}  // namespace fulcrum::models
