#include "trainer/lora/swiglu_linear.h"

#include <algorithm>
#include <vector>

#include "trainer/lora/linear_rows.h"
#include "trainer/models/swiglu_cpu_kernel.h"

namespace fulcrum::lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// silu(gate) for the up's gradient, computed by blocks of rows of about this
// many elements (1 MiB) instead of as one [N, in] tensor. Not smaller: the
// ~290M bench Llama's [1024, 2816] took 94 blocks of 11 rows at 128 KiB,
// whose silu and mul_ calls cost 6 ms a layer against 1.8 ms in 12 blocks.
constexpr int64_t kSiluBlockElements = int64_t{256} << 10;

// silu(gate) * up of [N, I] rows: one pass on fp32 CPU tensors.
torch::Tensor SwiGluProduct(const torch::Tensor& gate, const torch::Tensor& up) {
  if (models::SwiGluCpuKernelTakes({gate, up})) return models::SwiGluCpu(gate, up);
  return torch::silu(gate).mul_(up);
}

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up) {
    ctx->save_for_backward({gate, up});
    const int64_t in = gate.size(-1);
    return SwiGluProduct(gate.reshape({-1, in}), up.reshape({-1, in})).view(gate.sizes());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    const torch::Tensor& grad = grad_outputs[0];
    const int64_t in = gate.size(-1);
    const torch::Tensor g = gate.reshape({-1, in}), u = up.reshape({-1, in});
    if (models::SwiGluCpuKernelTakes({g, u})) {
      // d_up in place on a copy of the incoming gradient, d_gate beside it.
      const torch::Tensor d_up = grad.reshape({-1, in}).clone(at::MemoryFormat::Contiguous);
      const torch::Tensor d_gate = torch::empty(d_up.sizes(), d_up.options());
      models::SwiGluBackwardCpu(g, u, d_up, d_gate, /*up_gradient=*/true);
      return {d_gate.view(gate.sizes()), d_up.view(up.sizes())};
    }
    return {at::silu_backward(grad * up, gate), grad * torch::silu(gate)};
  }
};

// Inputs in order: gate, up, weight, bias, lora_a, lora_b.
class SwiGluLinearFunction : public torch::autograd::Function<SwiGluLinearFunction> {
 public:
  // Optional tensors as c10::optional (OptionalArgument).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& optional_bias,
                               const c10::optional<torch::Tensor>& optional_a,
                               const c10::optional<torch::Tensor>& optional_b, double scaling) {
    const RowsLinear layer = RowsLinearOf(weight, optional_bias, optional_a, optional_b, scaling);
    const int64_t in = gate.size(-1);
    const torch::Tensor p = SwiGluProduct(gate.reshape({-1, in}), up.reshape({-1, in}));
    torch::Tensor low;
    const torch::Tensor y = RowsLinearForward(p, layer, &low);
    ctx->save_for_backward({gate, up, weight, layer.lora_a, layer.lora_b, low});
    SaveRowsLinearScaling(ctx, scaling);
    ctx->saved_data["edges"] =
        EdgesOf({&gate, &up, &weight, &layer.bias, &layer.lora_a, &layer.lora_b});
    std::vector<int64_t> shape = gate.sizes().vec();
    shape.back() = y.size(1);
    return y.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    const RowsLinear layer = SavedRowsLinear(ctx, saved, 2);
    const torch::Tensor& low = saved[5];
    const int64_t in = gate.size(-1);
    const torch::Tensor g = gate.reshape({-1, in});
    const torch::Tensor u = up.reshape({-1, in});
    const torch::Tensor gy = grad_outputs[0].reshape({-1, layer.weight.size(0)});
    const std::vector<bool> needs = NeedsByArgument(ctx, ctx->saved_data["edges"].toIntList());
    // The forward's p again, only for the weight's and A's gradients (freed
    // before dp is allocated, which then takes its block).
    const RowsLinearGrads linear = RowsLinearBackward(
        gy, layer, low, {needs[0] || needs[1], needs[2], needs[3], needs[4], needs[5]},
        [&] { return SwiGluProduct(g, u); });
    variable_list grads{torch::Tensor(), torch::Tensor(), linear.weight,  linear.bias,
                        linear.lora_a,   linear.lora_b,   torch::Tensor()};
    if (!linear.input.defined()) return grads;
    torch::Tensor dp = linear.input;
    if (models::SwiGluCpuKernelTakes({g, u, dp})) {
      // Both gradients in one pass (swiglu_cpu_kernel.h), d_up in place on dp.
      if (needs[0]) grads[0] = torch::empty(dp.sizes(), dp.options());
      models::SwiGluBackwardCpu(g, u, dp, grads[0], needs[1]);
      if (needs[0]) grads[0] = grads[0].view(gate.sizes());
      if (needs[1]) grads[1] = dp.view(up.sizes());
      return grads;
    }
    // Two [N, in] buffers beside gate and up, not four: the gate's gradient
    // over dp * up, then the up's in place on dp, silu(gate) by blocks of
    // rows. This is the first backward node of the last layer, where a
    // step's memory peaks (all activations still held): the 290M bench
    // Llama's LoRA peak fell by 22 MiB.
    if (needs[0]) {
      torch::Tensor dg = dp * u;
      at::silu_backward_out(dg, dg, g);
      grads[0] = dg.view(gate.sizes());
    }
    if (needs[1]) {
      const int64_t rows = g.size(0);
      const int64_t block = std::max<int64_t>(1, kSiluBlockElements / std::max<int64_t>(1, in));
      for (int64_t r = 0; r < rows; r += block) {
        const int64_t n = std::min(block, rows - r);
        dp.narrow(0, r, n).mul_(torch::silu(g.narrow(0, r, n)));
      }
      grads[1] = dp.view(up.sizes());
    }
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
  return SwiGluLinearFunction::apply(gate, up, weight, OptionalArgument(bias),
                                     OptionalArgument(lora_a), OptionalArgument(lora_b), scaling);
}

}  // namespace fulcrum::lora
