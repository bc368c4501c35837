#include "trainer/lora/linear_rows.h"

#include "trainer/models/matrix_product.h"

namespace fulcrum::lora {

c10::optional<torch::Tensor> OptionalArgument(const torch::Tensor& t) {
  return t.defined() ? c10::optional<torch::Tensor>(t) : c10::nullopt;
}

RowsLinear RowsLinearOf(const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                        const c10::optional<torch::Tensor>& lora_a,
                        const c10::optional<torch::Tensor>& lora_b, double scaling) {
  return RowsLinear{weight, bias.value_or(torch::Tensor()), lora_a.value_or(torch::Tensor()),
                    lora_b.value_or(torch::Tensor()), scaling};
}

namespace {
constexpr char kScalingKey[] = "scaling";
}  // namespace

void SaveRowsLinearScaling(torch::autograd::AutogradContext* ctx, double scaling) {
  ctx->saved_data[kScalingKey] = scaling;
}

RowsLinear SavedRowsLinear(torch::autograd::AutogradContext* ctx,
                           const torch::autograd::variable_list& saved, size_t at) {
  return RowsLinear{saved[at], torch::Tensor(), saved[at + 1], saved[at + 2],
                    ctx->saved_data[kScalingKey].toDouble()};
}

torch::Tensor RowsLinearForward(const torch::Tensor& rows, const RowsLinear& layer,
                                torch::Tensor* low) {
  torch::Tensor y;
  if (layer.bias.defined()) {  // the bias under the product, as linear's addmm
    // A copy (expand's contiguous() of one row would be the bias itself).
    y = torch::empty({rows.size(0), layer.weight.size(0)}, rows.options());
    y.copy_(layer.bias);
    models::AddMatrixProduct(y, rows, layer.weight.t());
  } else {
    y = models::MatrixProduct(rows, layer.weight.t());
  }
  *low = torch::Tensor();
  if (layer.lora_a.defined()) {
    *low = models::MatrixProduct(rows, layer.lora_a.t());
    models::AddMatrixProduct(y, *low, layer.lora_b.t(), layer.scaling);
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
    dlow = models::MatrixProduct(grad, layer.lora_b).mul_(layer.scaling);
  }
  if (needs.weight || (adapter && needs.lora_a)) {
    const torch::Tensor x = rows();
    if (needs.weight) grads.weight = models::MatrixProduct(grad.t(), x);
    if (adapter && needs.lora_a) grads.lora_a = models::MatrixProduct(dlow.t(), x);
  }
  if (needs.bias) grads.bias = grad.sum(0);
  if (adapter && needs.lora_b)
    grads.lora_b = models::MatrixProduct(grad.t(), low).mul_(layer.scaling);
  if (needs.input) {
    grads.input = models::MatrixProduct(grad, layer.weight);
    if (adapter) models::AddMatrixProduct(grads.input, dlow, layer.lora_a);
  }
  return grads;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Inputs in order: rows, weight, bias, lora_a, lora_b.
class RowsLinearFunction : public torch::autograd::Function<RowsLinearFunction> {
 public:
  // Optional tensors as c10::optional (OptionalArgument).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows,
                               const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& optional_bias,
                               const c10::optional<torch::Tensor>& optional_a,
                               const c10::optional<torch::Tensor>& optional_b, double scaling) {
    const RowsLinear layer = RowsLinearOf(weight, optional_bias, optional_a, optional_b, scaling);
    torch::Tensor low;
    const torch::Tensor y = RowsLinearForward(rows, layer, &low);
    ctx->save_for_backward({rows, weight, layer.lora_a, layer.lora_b, low});
    SaveRowsLinearScaling(ctx, scaling);
    ctx->saved_data["edges"] = EdgesOf({&rows, &weight, &layer.bias, &layer.lora_a, &layer.lora_b});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& rows = saved[0];
    const RowsLinear layer = SavedRowsLinear(ctx, saved, 1);
    const std::vector<bool> needs = NeedsByArgument(ctx, ctx->saved_data["edges"].toIntList());
    const RowsLinearGrads grads = RowsLinearBackward(
        grad_outputs[0], layer, saved[4], {needs[0], needs[1], needs[2], needs[3], needs[4]},
        [&] { return rows; });
    return {grads.input, grads.weight, grads.bias, grads.lora_a, grads.lora_b, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RowsLinearApply(const torch::Tensor& rows, const RowsLinear& layer) {
  return RowsLinearFunction::apply(rows, layer.weight, OptionalArgument(layer.bias),
                                   OptionalArgument(layer.lora_a), OptionalArgument(layer.lora_b),
                                   layer.scaling);
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
