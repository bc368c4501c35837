// The eager attention core shared by GQA and MLA where no fused kernel runs
// (the CPU, LibTorch < 2.1): softmax(q k^T * scale + mask) v, scores in the
// input dtype and the softmax in fp32 as HF eager.
//
// Under autograd it keeps no probabilities: the forward saves q, k, v, the
// mask and each score row's fp32 max and 1 / sum ([B, H, T] each); the backward
// recomputes the probabilities from them, as the flash kernels do. The
// [B, H, T, S] fp32 probabilities (plus their dtype copy in bf16) were the
// largest activation of a layer at seq 256; recomputing them costs one
// q k^T GEMM more (~2% of a Llama layer's FLOPs at seq 256).
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// q [B, H, T, Dqk], k [B, Hkv, S, Dqk], v [B, Hkv, S, Dv], mask [B, 1, T, S]
// additive -> [B, H, T, Dv]. H = Hkv * G: query head h uses kv head h / G
// (HF repeat_kv), computed grouped ([B, Hkv, G*T, Dqk] x [B, Hkv, Dqk, S])
// without materialising repeated k/v.
torch::Tensor EagerAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale);

}  // namespace fulcrum::models
