// A linear layer reading an RMSNorm's output that does not keep that output
// for backward.
//
// The weight's gradient (full fine-tuning) and adapter A's (LoRA) need the
// layer's input, the norm's output y. The norm keeps its input x and the
// per-row 1/rms for its own backward, and y is elementwise in them, so
// backward can compute y again for a pass over [N, dim] instead of the
// projections holding one more [N, dim] tensor per norm from forward to
// backward: a Llama layer's q/k/v and gate/up, 2 x hidden of ~12k floats
// kept per token and layer on the 290M bench Llama.
#pragma once

#include <torch/torch.h>

#include "trainer/models/rms_norm.h"

namespace fulcrum::lora {

// in.y W^T + b + scaling (in.y A^T) B^T with LoraLinear's GEMMs (values
// bitwise an unfused layer's), keeping in.x, in.rstd, in.weight and the
// adapter's [N, r] product; backward computes y again (RmsNormValues) only
// where W or A trains, and hands y's gradient to the norm. in.x must be
// defined. weight [out, dim]; bias [out] or undefined; lora_a [r, dim] and
// lora_b [out, r], or both undefined -> [..., out].
torch::Tensor NormedLinear(const models::RmsNormOutput& in, const torch::Tensor& weight,
                           const torch::Tensor& bias, const torch::Tensor& lora_a,
                           const torch::Tensor& lora_b, double scaling);

}  // namespace fulcrum::lora
