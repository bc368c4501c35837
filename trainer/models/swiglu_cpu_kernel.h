// SwiGLU, p = silu(gate) * up, and its gradients on fp32 or bf16 CPU
// tensors, each element read once.
//
// The torch ops they replace read and wrote each [N, I] element 2-3 times
// per result (silu, then mul_; dp * up, silu_backward, silu again, mul_),
// with a sigmoid each time: on the ~290M bench Llama ([1024, 2816] per
// layer) ~5 ms of each layer's forward and backward. Here one pass computes
// the sigmoid once and writes what is asked.
//
// Numerics: sigmoid(x) from exp(-|x|) (vector_exp.h) as 1 / (1 + e) or
// e / (1 + e): results differ from torch's silu and silu_backward by
// rounding only; a NaN gate gives NaN results. bf16 tensors are computed in
// fp32 and each result rounded to bf16 once: the fp32 kernel's result on the
// same values, then .to(bf16), to the bit (torch's bf16 silu, then mul,
// round twice).
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// Whether the kernels take these tensors: all fp32 or all bf16 on the CPU,
// equal 2-D shapes [rows, cols] with unit column stride (rows may be a
// stride apart).
bool SwiGluCpuKernelTakes(std::initializer_list<torch::Tensor> tensors);

// silu(gate) * up, a new contiguous tensor.
torch::Tensor SwiGluCpu(const torch::Tensor& gate, const torch::Tensor& up);

// Given dp, the gradient of p: d_gate = dp * up * silu'(gate) where d_gate
// is defined, then dp *= silu(gate) in place (d_up) where `up_gradient`.
void SwiGluBackwardCpu(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& dp,
                       const torch::Tensor& d_gate, bool up_gradient);

}  // namespace fulcrum::models
