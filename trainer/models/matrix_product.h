// Products of two fp32 matrices on the CPU through oneDNN's matmul primitive:
// the model's linear layers (their forward and both backward products) and
// the output projection's chunks.
//
// On the 290M bench Llama's shapes at 2 threads on an AVX-512 host,
// LibTorch's mm (OpenBLAS) ran 163-198 GFLOP/s and oneDNN 188-218 on the
// large products; the rank-16 adapter products ran ~67 against ~90. oneDNN's
// sgemm entry (batched_matmul.h) packs its operands into buffers it
// mallocs per call, which fragmented glibc's heap by ~150 MB over a step; the
// matmul primitive here takes its scratch from the caller (a tensor of the
// caching host allocator, a few hundred KiB), so it holds no memory of its
// own between calls.
//
// Other dtypes and devices, sizes a step does not repeat (not a multiple of
// 64 and not below it: the rows an expert receives), and builds without
// oneDNN take torch::mm.
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// a [M, K] @ b [K, N] -> [M, N]; a and b may be transposed views.
torch::Tensor MatrixProduct(const torch::Tensor& a, const torch::Tensor& b);

// out [M, N] = a @ b (out's rows may be a narrow of a larger matrix).
void MatrixProductInto(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b);

// out [M, N] += alpha * a @ b.
void AddMatrixProduct(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                      double alpha = 1.0);

// out [..., M, N] = a [..., M, K] @ b [..., K, N], or out += a @ b where
// `accumulate`, the leading dims equal: each operand's matrices row- or
// column-major, placed by any strides over those dims (the attention's
// per-head products). False, nothing written, where oneDNN does not take
// them: the caller takes its own path.
bool BatchedMatrixProductInto(const torch::Tensor& out, const torch::Tensor& a,
                              const torch::Tensor& b, bool accumulate);

// The largest size <= `size` (and >= 1) of those oneDNN takes: `size` itself
// below 64, else a multiple of 64. For callers that pick their own pass
// sizes (lm_head's loss), so that every pass stays on the fast path.
int64_t RepeatingSizeAtMost(int64_t size);

// Whether fp32 CPU products take oneDNN in this build.
bool MatrixProductUsesOneDnn();

}  // namespace fulcrum::models
