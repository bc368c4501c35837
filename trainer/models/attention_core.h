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

#include <cstdint>
#include <vector>

namespace fulcrum::models {

// q [B, H, T, Dqk], k [B, Hkv, S, Dqk], v [B, Hkv, S, Dv], mask [B, 1, T, S]
// additive -> [B, H, T, Dv]. H = Hkv * G: query head h uses kv head h / G
// (HF repeat_kv), computed grouped ([B, Hkv, G*T, Dqk] x [B, Hkv, Dqk, S])
// without materialising repeated k/v. fp32 products on the CPU take oneDNN's
// sgemm, one (sequence, kv head) per thread (batched_matmul.h).
//
// Causal masks are computed in blocks of query positions, each over the keys
// up to its last query only: on the CPU blocks of 64 queries (`query_block`
// > 0 sets it), on a GPU one block. Where the mask does not hide every later
// key, one block; a block holding a row the mask hides whole takes every key.
torch::Tensor EagerAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale, int64_t query_block = 0);

// One block of query positions [t0, t0 + n) and the keys [0, keys) it reads.
struct QueryBlock {
  int64_t t0 = 0, n = 0, keys = 0;
};

// Query positions per block by default, of t: what the backward's fp32
// probabilities and their gradient span (the memory model counts them).
int64_t EagerQueryBlockRows(int64_t t, bool cuda);

// The blocks EagerAttention takes for these arguments.
std::vector<QueryBlock> AttentionQueryBlocks(const torch::Tensor& q, const torch::Tensor& mask,
                                             int64_t requested = 0);

}  // namespace fulcrum::models
