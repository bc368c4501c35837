#include "trainer/lora/swiglu_linear.h"

#include <vector>

namespace fulcrum::lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return torch::silu(gate).mul_(up);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    const torch::Tensor& grad = grad_outputs[0];
    return {at::silu_backward(grad * up, gate), grad * torch::silu(gate)};
  }
};

// Inputs in order: gate, up, weight, bias, lora_a, lora_b.
class SwiGluLinearFunction : public torch::autograd::Function<SwiGluLinearFunction> {
 public:
  // LibTorch 1.13 records the device of every tensor input of a custom
  // function, so the optional ones come as c10::optional.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& optional_bias,
                               const c10::optional<torch::Tensor>& optional_a,
                               const c10::optional<torch::Tensor>& optional_b, double scaling) {
    const torch::Tensor bias = optional_bias.value_or(torch::Tensor());
    const torch::Tensor lora_a = optional_a.value_or(torch::Tensor());
    const torch::Tensor lora_b = optional_b.value_or(torch::Tensor());
    const int64_t in = gate.size(-1);
    const torch::Tensor p = torch::silu(gate.reshape({-1, in})).mul_(up.reshape({-1, in}));
    torch::Tensor y = torch::nn::functional::linear(p, weight, bias);
    torch::Tensor low;
    if (lora_a.defined()) {
      low = torch::mm(p, lora_a.t());
      y.addmm_(low, lora_b.t(), 1, scaling);
    }
    ctx->save_for_backward({gate, up, weight, lora_a, lora_b, low});
    ctx->saved_data["scaling"] = scaling;
    // Each argument's autograd edge (the defined tensors are numbered in
    // order), -1 for an absent one.
    std::vector<int64_t> edges;
    int64_t next_edge = 0;
    for (const torch::Tensor* t : {&gate, &up, &weight, &bias, &lora_a, &lora_b}) {
      edges.push_back(t->defined() ? next_edge++ : -1);
    }
    ctx->saved_data["edges"] = edges;
    std::vector<int64_t> shape = gate.sizes().vec();
    shape.back() = y.size(1);
    return y.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    const torch::Tensor& weight = saved[2];
    const torch::Tensor& lora_a = saved[3];
    const torch::Tensor& lora_b = saved[4];
    const torch::Tensor& low = saved[5];
    const double scaling = ctx->saved_data["scaling"].toDouble();
    const int64_t in = gate.size(-1);
    const torch::Tensor g = gate.reshape({-1, in});
    const torch::Tensor u = up.reshape({-1, in});
    const torch::Tensor gy = grad_outputs[0].reshape({-1, weight.size(0)});

    // Asked per call: zero-bubble's split backward (parallel/pipeline/
    // split_backward.h) asks for the inputs' gradients in one call and for
    // the weights' in another.
    const c10::List<int64_t> edges = ctx->saved_data["edges"].toIntList();
    std::vector<bool> needs;
    for (const int64_t edge : edges) {
      needs.push_back(edge >= 0 && ctx->needs_input_grad(static_cast<size_t>(edge)));
    }
    const bool weight_trains = needs[2];
    const bool a_trains = lora_a.defined() && needs[4];
    const bool input_grads = needs[0] || needs[1];
    const torch::Tensor silu_g = torch::silu(g);
    variable_list grads(7);
    torch::Tensor dlow;  // d(loss)/d(p A^T), [N, r]
    if (lora_a.defined() && (a_trains || input_grads)) dlow = gy.mm(lora_b).mul_(scaling);
    {
      // The forward's p again, for the weight's and A's gradients only; freed
      // before dp so that the two never coexist.
      const torch::Tensor p = weight_trains || a_trains ? silu_g * u : torch::Tensor();
      if (weight_trains) grads[2] = gy.t().mm(p);
      if (a_trains) grads[4] = dlow.t().mm(p);
    }
    if (needs[3]) grads[3] = gy.sum(0);
    if (lora_a.defined() && needs[5]) grads[5] = gy.t().mm(low).mul_(scaling);
    if (!input_grads) return grads;
    torch::Tensor dp = gy.mm(weight);
    if (lora_a.defined()) dp.addmm_(dlow, lora_a);
    if (needs[0]) grads[0] = at::silu_backward(dp * u, g).view(gate.sizes());
    if (needs[1]) grads[1] = dp.mul_(silu_g).view(up.sizes());
    return grads;
  }
};

}  // namespace

torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
  return SwiGluFunction::apply(gate, up);
}

torch::Tensor SwiGluLinear(const torch::Tensor& gate, const torch::Tensor& up,
                           const torch::Tensor& weight, const torch::Tensor& bias,
                           const torch::Tensor& lora_a, const torch::Tensor& lora_b,
                           double scaling) {
  const auto optional = [](const torch::Tensor& t) {
    return t.defined() ? c10::optional<torch::Tensor>(t) : c10::nullopt;
  };
  return SwiGluLinearFunction::apply(gate, up, weight, optional(bias), optional(lora_a),
                                     optional(lora_b), scaling);
}

}  // namespace fulcrum::lora
