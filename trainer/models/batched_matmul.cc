#include "trainer/models/batched_matmul.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "core/parallel_for.h"
#include "trainer/models/matrix_product.h"

#if FULCRUM_WITH_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

namespace fulcrum::models {
namespace {

void MatmulThroughTorch(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                        bool accumulate) {
  const torch::Tensor product = torch::matmul(a, b);
  if (accumulate) {
    out.add_(product);
  } else {
    out.copy_(product);
  }
}

#if FULCRUM_WITH_DNNL

// One operand's matrices (its last two dims) as sgemm reads them: row-major
// with a leading dimension, transposed or not, one base offset per batch.
struct Operand {
  torch::Tensor tensor;  // the operand, or the contiguous copy read instead
  char trans = 'N';
  int64_t ld = 1;
  std::vector<int64_t> offsets;
};

// The element offset of each batch of x (leading dims `batch`, row-major
// order), strides of 0 (expanded dims) included.
std::vector<int64_t> BatchOffsets(const torch::Tensor& x, at::IntArrayRef batch) {
  std::vector<int64_t> offsets = {0};
  for (size_t d = 0; d < batch.size(); ++d) {
    std::vector<int64_t> next;
    next.reserve(offsets.size() * batch[d]);
    for (const int64_t base : offsets) {
      for (int64_t i = 0; i < batch[d]; ++i) next.push_back(base + i * x.stride(d));
    }
    offsets = std::move(next);
  }
  return offsets;
}

Operand AsOperand(torch::Tensor x, at::IntArrayRef batch) {
  const int64_t rows = x.size(-2), cols = x.size(-1);
  const int64_t row_stride = x.stride(-2), col_stride = x.stride(-1);
  Operand op;
  if (col_stride == 1 && row_stride >= std::max<int64_t>(1, cols)) {
    op.trans = 'N', op.ld = row_stride;
  } else if (row_stride == 1 && col_stride >= std::max<int64_t>(1, rows)) {
    op.trans = 'T', op.ld = col_stride;
  } else {
    x = x.contiguous();
    op.trans = 'N', op.ld = std::max<int64_t>(1, cols);
  }
  op.offsets = BatchOffsets(x, batch);
  op.tensor = std::move(x);
  return op;
}

bool IsCpuFloatMatrices(const torch::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() >= 2;
}

// Operands oneDNN takes: fp32 CPU matrices with equal batch dims.
bool TakesOneDnn(const torch::Tensor& a, const torch::Tensor& b) {
  return IsCpuFloatMatrices(a) && IsCpuFloatMatrices(b) && a.dim() == b.dim() &&
         a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2);
}

// out's matrices must have unit column stride: others get a product buffer.
void MatmulThroughOneDnn(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                         bool accumulate) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const at::IntArrayRef batch = a.sizes().slice(0, a.dim() - 2);
  const bool direct = out.stride(-1) == 1 && out.stride(-2) >= std::max<int64_t>(1, n);
  const torch::Tensor target = direct ? out : torch::empty(out.sizes(), out.options());
  const bool add = accumulate && direct;
  if (target.numel() == 0) return;
  // Named in FULCRUM_PROFILE's traces, which see no aten op here.
  RECORD_FUNCTION("fulcrum::BatchedMatmul", std::vector<c10::IValue>());
  // oneDNN's matmul primitive first: its kernels for these sizes (K =
  // head_dim or keys) ran 330-430 GFLOP/s at 2 threads on the bench host
  // against sgemm's 190-330 one matrix per call.
  if (k == 0) {
    if (!add) target.zero_();
  } else if (a.dim() == 2 || !BatchedMatrixProductInto(target, a, b, add)) {
    const Operand lhs = AsOperand(a, batch), rhs = AsOperand(b, batch);
    const std::vector<int64_t> out_offsets = BatchOffsets(target, batch);
    const float* lhs_data = lhs.tensor.data_ptr<float>();
    const float* rhs_data = rhs.tensor.data_ptr<float>();
    float* out_data = target.data_ptr<float>();
    const int64_t ldc = target.stride(-2);
    const float beta = add ? 1.0f : 0.0f;
    // One matrix per thread: inside the parallel region oneDNN runs each on
    // the calling thread, so a product's bits do not depend on how many
    // matrices share the call.
    ParallelFor(0, static_cast<int64_t>(out_offsets.size()), 1, [&](int64_t s, int64_t e) {
      for (int64_t u = s; u < e; ++u) {
        const dnnl_status_t status =
            dnnl_sgemm(lhs.trans, rhs.trans, m, n, k, 1.0f, lhs_data + lhs.offsets[u], lhs.ld,
                       rhs_data + rhs.offsets[u], rhs.ld, beta, out_data + out_offsets[u], ldc);
        FULCRUM_CHECK(status == dnnl_success, "dnnl_sgemm failed with status ", status);
      }
    });
  }
  if (direct) return;
  if (accumulate) {
    out.add_(target);
  } else {
    out.copy_(target);
  }
}

#endif  // FULCRUM_WITH_DNNL

}  // namespace

bool BatchedMatmulUsesOneDnn() {
#if FULCRUM_WITH_DNNL
  return true;
#else
  return false;
#endif
}

void BatchedMatmulOut(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                      bool accumulate) {
  FULCRUM_CHECK(a.dim() >= 2 && b.dim() >= 2 && a.size(-1) == b.size(-2) &&
                    out.size(-2) == a.size(-2) && out.size(-1) == b.size(-1),
                "batched matmul of ", c10::str(a.sizes()), " and ", c10::str(b.sizes()), " into ",
                c10::str(out.sizes()));
#if FULCRUM_WITH_DNNL
  if (TakesOneDnn(a, b) && IsCpuFloatMatrices(out) && out.dim() == a.dim()) {
    return MatmulThroughOneDnn(out, a, b, accumulate);
  }
#endif
  MatmulThroughTorch(out, a, b, accumulate);
}

torch::Tensor BatchedMatmul(const torch::Tensor& a, const torch::Tensor& b) {
#if FULCRUM_WITH_DNNL
  if (TakesOneDnn(a, b)) {
    std::vector<int64_t> sizes = a.sizes().vec();
    sizes.back() = b.size(-1);
    torch::Tensor out = torch::empty(sizes, a.options());
    BatchedMatmulOut(out, a, b, /*accumulate=*/false);
    return out;
  }
#endif
  return torch::matmul(a, b);
}

}  // namespace fulcrum::models
