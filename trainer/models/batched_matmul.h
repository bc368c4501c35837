// Products of many small matrices, as the eager attention makes per
// (sequence, kv head): [G*n, D] x [D, keys] and the like, D = 64.
//
// On the CPU, LibTorch's bmm runs them one after another through OpenBLAS,
// which reaches 35-45 GFLOP/s on them at 2 threads (its packing dominates at
// K = 64). Debian's LibTorch links oneDNN itself; fulcrum uses it where the
// build found it (FULCRUM_WITH_DNNL), for fp32 CPU tensors: sizes a step
// repeats through its matmul primitive (matrix_product.h; brgemm kernels,
// 330-430 GFLOP/s on the ~290M bench Llama's attention at 2 threads, where
// the fp32 peak is ~380), others through its sgemm, one matrix per thread
// (190-330), reading strided and transposed operands in place; torch::matmul
// everywhere else. A shape's products have the same bits in every call
// (exact resume); layouts that split the heads (tp) batch fewer matrices per
// call, and the primitive's products may round differently there, within
// the fp32 tolerance that layout equivalence allows.
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// a [..., M, K] @ b [..., K, N] -> [..., M, N], the leading (batch) dims of a
// and b equal. Either operand may be a transposed, narrowed or expanded view.
torch::Tensor BatchedMatmul(const torch::Tensor& a, const torch::Tensor& b);

// out [..., M, N] = a @ b, or out += a @ b where `accumulate`; out may be a
// strided view (a narrow of a larger tensor). out's dtype may be wider than
// a's and b's (an fp32 sum of bf16 products).
void BatchedMatmulOut(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                      bool accumulate);

// Whether fp32 CPU products take oneDNN's sgemm in this build.
bool BatchedMatmulUsesOneDnn();

}  // namespace fulcrum::models
