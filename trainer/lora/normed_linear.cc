#include "trainer/lora/normed_linear.h"

#include <vector>

#include "core/check.h"
#include "trainer/lora/linear_rows.h"

namespace fulcrum::lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Inputs in order: y, weight, bias, lora_a, lora_b, then the norm's x, rstd
// and weight detached (no edges: the norm's own node differentiates y).
// Detached tensors share storage and version counter: kept, they cost
// nothing, and an in-place change is still reported.
class NormedLinearFunction : public torch::autograd::Function<NormedLinearFunction> {
 public:
  // Optional tensors as c10::optional (OptionalArgument).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y,
                               const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& optional_bias,
                               const c10::optional<torch::Tensor>& optional_a,
                               const c10::optional<torch::Tensor>& optional_b, double scaling,
                               const torch::Tensor& norm_x, const torch::Tensor& norm_rstd,
                               const torch::Tensor& norm_weight) {
    const RowsLinear layer = RowsLinearOf(weight, optional_bias, optional_a, optional_b, scaling);
    torch::Tensor low;
    const torch::Tensor out = RowsLinearForward(y.reshape({-1, y.size(-1)}), layer, &low);
    ctx->save_for_backward(
        {norm_x, norm_rstd, norm_weight, weight, layer.lora_a, layer.lora_b, low});
    SaveRowsLinearScaling(ctx, scaling);
    ctx->saved_data["edges"] = EdgesOf({&y, &weight, &layer.bias, &layer.lora_a, &layer.lora_b});
    std::vector<int64_t> shape = y.sizes().vec();
    shape.back() = out.size(1);
    return out.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& rstd = saved[1];
    const torch::Tensor& norm_weight = saved[2];
    const RowsLinear layer = SavedRowsLinear(ctx, saved, 3);
    const torch::Tensor& low = saved[6];
    const int64_t dim = x.size(-1);
    const torch::Tensor gy = grad_outputs[0].reshape({-1, layer.weight.size(0)});
    const std::vector<bool> needs = NeedsByArgument(ctx, ctx->saved_data["edges"].toIntList());
    const RowsLinearGrads linear =
        RowsLinearBackward(gy, layer, low, {needs[0], needs[1], needs[2], needs[3], needs[4]}, [&] {
          return models::RmsNormValues(x, rstd, norm_weight).reshape({-1, dim});
        });
    torch::Tensor grad_y;
    if (linear.input.defined()) grad_y = linear.input.view(x.sizes());
    // One per argument: y, weight, bias, lora_a, lora_b, scaling, the norm's three.
    return {grad_y,          linear.weight,   linear.bias,     linear.lora_a,  linear.lora_b,
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor NormedLinear(const models::RmsNormOutput& in, const torch::Tensor& weight,
                           const torch::Tensor& bias, const torch::Tensor& lora_a,
                           const torch::Tensor& lora_b, double scaling) {
  FULCRUM_CHECK(in.x.defined() && in.rstd.defined(), "NormedLinear needs the norm's x and rstd");
  return NormedLinearFunction::apply(in.y, weight, OptionalArgument(bias), OptionalArgument(lora_a),
                                     OptionalArgument(lora_b), scaling, in.x.detach(),
                                     in.rstd.detach(), in.weight.detach());
}

}  // namespace fulcrum::lora
