// The SwiGLU activation silu(gate) * up, and a linear layer applied to it
// that does not keep it for backward.
//
// A SwiGLU MLP's backward needs gate and up (the activation's gradient) and
// the down projection's input p = silu(gate) * up (its weight's, or its
// adapter A's, gradient). p is elementwise in gate and up, so backward can
// compute it again for a pass over [N, width] instead of holding one more
// [N, width] tensor per MLP from forward to backward: on the 290M bench
// Llama that is 2816 of ~16k floats kept per token and layer.
#pragma once

#include <torch/torch.h>

namespace fulcrum::lora {

// silu(gate) * up keeping only gate and up for backward (autograd's ops, so
// values and gradients are bitwise those of the two plain ops).
torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up);

// p W^T + b + scaling (p A^T) B^T with p = silu(gate) * up, computed with
// the GEMMs of LoraLinear's product on [N, in] rows (an unfused forward's
// values without a bias, bitwise). Keeps gate, up and the adapter's [N, r]
// low-rank product; backward recomputes p only where W or A trains.
// gate, up [..., in]; weight [out, in]; bias [out] or undefined; lora_a
// [r, in] and lora_b [out, r], or both undefined -> [..., out].
torch::Tensor SwiGluLinear(const torch::Tensor& gate, const torch::Tensor& up,
                           const torch::Tensor& weight, const torch::Tensor& bias,
                           const torch::Tensor& lora_a, const torch::Tensor& lora_b,
                           double scaling);

}  // namespace fulcrum::lora
