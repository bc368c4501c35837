#include "trainer/models/rms_norm.h"

#include "trainer/models/recompute.h"
#include "trainer/models/rms_norm_cpu_kernel.h"

namespace fulcrum::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Keeps x and the fp32 1/rms per row for the backward. Autograd of the ops
// would also keep x^2 (LibTorch 1.13's mean saves its input) and, when the
// weight trains, the normalised activations: two more [N, dim] tensors per
// norm, 12% of a Llama layer's saved activations under LoRA. The backward
// follows autograd's ops and order; on fp32 CPU tensors the one-pass kernels
// (rms_norm_cpu_kernel.h) compute the same, rounded in another order.
class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  // rstd: Statistics(x, eps), computed by the caller, who may hand it on.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& rstd) {
    ctx->save_for_backward({x, weight, rstd});
    return RmsNormValues(x, rstd, weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &rstd = saved[2];
    const torch::Tensor& grad = grad_outputs[0];
    if (RmsNormCpuKernelTakes({x, weight, rstd, grad})) {
      RmsNormGradsCpu grads = RmsNormBackwardCpu(x, rstd, weight, grad, ctx->needs_input_grad(0),
                                                 ctx->needs_input_grad(1));
      return {grads.x, grads.weight, torch::Tensor()};
    }
    const torch::Tensor xf = x.to(torch::kFloat);
    torch::Tensor grad_weight;
    if (ctx->needs_input_grad(1)) {
      const torch::Tensor normed = (xf * rstd).to(x.scalar_type());
      grad_weight = (grad * normed).reshape({-1, weight.size(0)}).sum(0).to(weight.scalar_type());
    }
    torch::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const torch::Tensor grad_normed = (grad * weight).to(torch::kFloat);
      // rsqrt' = -rstd^3 / 2, mean' = 1 / dim, (x^2)' = 2 x.
      const torch::Tensor grad_rstd = (grad_normed * xf).sum(-1, /*keepdim=*/true);
      const torch::Tensor grad_variance = grad_rstd * (-0.5 * rstd.pow(3));
      const double dim = static_cast<double>(x.size(-1));
      grad_x = (grad_variance / dim * 2 * xf + grad_normed * rstd).to(x.scalar_type());
    }
    return {grad_x, grad_weight, torch::Tensor()};
  }
};

// The fp32 1/rms of x's rows [..., 1], without autograd history (the
// function's backward differentiates through it).
torch::Tensor Statistics(const torch::Tensor& x, double eps) {
  torch::NoGradGuard no_grad;
  if (RmsNormCpuKernelTakes({x})) return RmsNormStatisticsCpu(x, eps);
  return torch::rsqrt(x.to(torch::kFloat).pow(2).mean(-1, /*keepdim=*/true) + eps);
}

}  // namespace

torch::Tensor RmsNormValues(const torch::Tensor& x, const torch::Tensor& rstd,
                            const torch::Tensor& weight) {
  // The kernel records no graph: for callers under no_grad (forward and
  // backward of the functions that keep x and rstd).
  const bool recorded =
      torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  if (!recorded && RmsNormCpuKernelTakes({x, rstd, weight})) {
    return RmsNormValuesCpu(x, rstd, weight);
  }
  return weight * (x.to(torch::kFloat) * rstd).to(x.scalar_type());
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options) : eps_(eps) {
  weight = register_parameter("weight", torch::empty({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (!recompute_) return Normalize(x);
  RecomputedRegion region;
  region.fn = [this](const std::vector<torch::Tensor>& in, ForwardPass) {
    return Normalize(in[0]);
  };
  region.params = {weight};
  return RunRecomputed(region, {x});
}

RmsNormOutput RMSNormImpl::ForwardRecomputable(const torch::Tensor& x) {
  const torch::Tensor rstd = Statistics(x, eps_);
  return RmsNormOutput{RmsNormFunction::apply(x, weight, rstd), x, rstd, weight};
}

torch::Tensor RMSNormImpl::Normalize(const torch::Tensor& x) {
  return RmsNormFunction::apply(x, weight, Statistics(x, eps_));
}

}  // namespace fulcrum::models
