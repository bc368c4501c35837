#include "trainer/lora/linear_rows.h"

namespace fulcrum::lora {

torch::Tensor RowsLinearForward(const torch::Tensor& rows, const RowsLinear& layer,
                                torch::Tensor* low) {
  torch::Tensor y = torch::nn::functional::linear(rows, layer.weight, layer.bias);
  *low = torch::Tensor();
  if (layer.lora_a.defined()) {
    *low = torch::mm(rows, layer.lora_a.t());
    y.addmm_(*low, layer.lora_b.t(), 1, layer.scaling);
  }
  return y;
}

RowsLinearGrads RowsLinearBackward(const torch::Tensor& grad, const RowsLinear& layer,
                                   const torch::Tensor& low, const RowsLinearNeeds& needs,
                                   const std::function<torch::Tensor()>& rows) {
  const bool adapter = layer.lora_a.defined();
  RowsLinearGrads grads;
  torch::Tensor dlow;  // d(loss)/d(x A^T), [N, r]
  if (adapter && (needs.lora_a || needs.input)) {
    dlow = grad.mm(layer.lora_b).mul_(layer.scaling);
  }
  if (needs.weight || (adapter && needs.lora_a)) {
    const torch::Tensor x = rows();
    if (needs.weight) grads.weight = grad.t().mm(x);
    if (adapter && needs.lora_a) grads.lora_a = dlow.t().mm(x);
  }
  if (needs.bias) grads.bias = grad.sum(0);
  if (adapter && needs.lora_b) grads.lora_b = grad.t().mm(low).mul_(layer.scaling);
  if (needs.input) {
    grads.input = grad.mm(layer.weight);
    if (adapter) grads.input.addmm_(dlow, layer.lora_a);
  }
  return grads;
}

std::vector<int64_t> EdgesOf(std::initializer_list<const torch::Tensor*> arguments) {
  std::vector<int64_t> edges;
  int64_t next = 0;
  for (const torch::Tensor* t : arguments) edges.push_back(t->defined() ? next++ : -1);
  return edges;
}

std::vector<bool> NeedsByArgument(torch::autograd::AutogradContext* ctx,
                                  const c10::List<int64_t>& edges) {
  std::vector<bool> needs;
  for (const int64_t edge : edges) {
    needs.push_back(edge >= 0 && ctx->needs_input_grad(static_cast<size_t>(edge)));
  }
  return needs;
}

}  // namespace fulcrum::lora
