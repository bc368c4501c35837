#include "trainer/models/moe_balance.h"

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace fulcrum::models {
namespace {

// E * sum_e f_e * P_e over one group of tokens: scores [n, E] (rows summing
// to 1), expert_ids [n, k].
torch::Tensor BalanceOfTokens(const torch::Tensor& scores, const torch::Tensor& expert_ids,
                              int64_t num_experts) {
  const int64_t n = scores.size(0), k = expert_ids.size(1);
  const torch::Tensor counts =
      torch::zeros({num_experts}, scores.options())
          .index_add_(0, expert_ids.reshape({-1}),
                      torch::ones({n * k}, scores.options()));  // tokens routed to each expert
  const torch::Tensor f = counts * (static_cast<double>(num_experts) / static_cast<double>(n * k));
  return (f * scores.mean(0)).sum();
}

class AuxLossGradient : public torch::autograd::Function<AuxLossGradient> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& output,
                               const torch::Tensor& loss, double weight) {
    ctx->saved_data["weight"] = weight;
    return output.view_as(output);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double weight = ctx->saved_data["weight"].toDouble();
    const torch::Tensor grad_loss = torch::full(
        {}, weight, torch::TensorOptions().dtype(torch::kFloat).device(grads[0].device()));
    return {grads[0], grad_loss, torch::Tensor()};
  }
};

}  // namespace

absl::StatusOr<AuxLoss> ParseAuxLoss(const std::string& name) {
  if (name == "none") return AuxLoss::kNone;
  if (name == "switch") return AuxLoss::kSwitch;
  if (name == "seq") return AuxLoss::kSequence;
  return absl::InvalidArgumentError(
      absl::StrCat("expected one of none | switch | seq, got \"", name, "\""));
}

torch::Tensor RouterBalanceLoss(const Routing& routing, int64_t num_experts, int64_t rows,
                                bool sigmoid_scores, const MoeBalanceOptions& options) {
  if (!options.active()) return {};
  const int64_t n = routing.scores.size(0);
  FULCRUM_CHECK(rows > 0 && n % rows == 0, rows, " rows do not divide ", n, " routed tokens");
  torch::Tensor total = torch::zeros({}, routing.scores.options().dtype(torch::kFloat));
  if (options.aux_loss != AuxLoss::kNone && options.aux_loss_coeff > 0) {
    torch::Tensor scores = routing.scores.to(torch::kFloat);
    if (sigmoid_scores) scores = scores / (scores.sum(-1, /*keepdim=*/true) + 1e-20);
    torch::Tensor balance;
    if (options.aux_loss == AuxLoss::kSwitch) {
      balance = BalanceOfTokens(scores, routing.expert_ids, num_experts);
    } else {
      const int64_t t = n / rows;
      balance = torch::zeros({}, scores.options());
      for (int64_t r = 0; r < rows; ++r) {
        balance = balance + BalanceOfTokens(scores.narrow(0, r * t, t),
                                            routing.expert_ids.narrow(0, r * t, t), num_experts);
      }
      balance = balance / static_cast<double>(rows);
    }
    total = total + options.aux_loss_coeff * balance;
  }
  if (options.z_loss_coeff > 0) {
    const torch::Tensor z = torch::logsumexp(routing.logits.to(torch::kFloat), -1);
    total = total + options.z_loss_coeff * z.square().mean();
  }
  return total;
}

torch::Tensor AttachAuxLossGradient(const torch::Tensor& output, const torch::Tensor& loss,
                                    double weight) {
  return AuxLossGradient::apply(output, loss, weight);
}

torch::Tensor ExpertLoads(const torch::Tensor& expert_ids, int64_t num_experts) {
  torch::NoGradGuard no_grad;
  // scatter_add, not bincount: CUDA's bincount reads the largest id back to the host.
  const torch::Tensor ids = expert_ids.reshape({-1});
  return torch::zeros({num_experts}, ids.options().dtype(torch::kDouble))
      .scatter_add_(0, ids, torch::ones(ids.sizes(), ids.options().dtype(torch::kDouble)));
}

void UpdateCorrectionBias(torch::Tensor& bias, const torch::Tensor& loads, double rate) {
  torch::NoGradGuard no_grad;
  FULCRUM_CHECK(bias.dim() == 1 && loads.numel() == bias.numel(), "bias of ", bias.numel(),
                " experts, loads of ", loads.numel());
  const torch::Tensor l = loads.to(torch::kDouble).to(bias.device());
  bias.add_((l.mean() - l).sign().to(bias.dtype()) * rate);
}

}  // namespace fulcrum::models
