// RMSNorm's statistics, values and gradients on fp32 CPU rows, each in one
// pass.
//
// The torch ops they replace (rms_norm.cc) read and wrote each [N, dim]
// element several times per result: x^2 then its mean for the statistics,
// x * rstd then weight * that for the values (again in the backward of every
// projection that recomputes them), and five [N, dim] temporaries for the
// backward. Here a row is read once per result, while it sits in cache.
//
// Numerics: the values are bitwise those of the ops for a given rstd (the
// same two roundings, x * rstd then weight * that); the statistics' and the
// gradients' sums run in another order, so they differ from the ops' by
// rounding. The weight's gradient sums fixed blocks of rows, then the blocks
// in order: the same bits whatever the thread count.
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// Whether the kernels take these: fp32 CPU tensors, x contiguous with its
// last dim the weight's length, the weight contiguous. Undefined ones pass.
bool RmsNormCpuKernelTakes(std::initializer_list<torch::Tensor> tensors);

// 1 / sqrt(mean(x^2) + eps) per row of x [..., dim], as [..., 1].
torch::Tensor RmsNormStatisticsCpu(const torch::Tensor& x, double eps);

// weight * (x * rstd), a new tensor shaped as x.
torch::Tensor RmsNormValuesCpu(const torch::Tensor& x, const torch::Tensor& rstd,
                               const torch::Tensor& weight);

struct RmsNormGradsCpu {
  torch::Tensor x;       // [..., dim], where asked
  torch::Tensor weight;  // [dim], where asked
};

// Given grad, the gradient of the values: the gradients of x (through rstd
// too) and of the weight.
RmsNormGradsCpu RmsNormBackwardCpu(const torch::Tensor& x, const torch::Tensor& rstd,
                                   const torch::Tensor& weight, const torch::Tensor& grad,
                                   bool x_gradient, bool weight_gradient);

}  // namespace fulcrum::models
