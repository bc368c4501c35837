#include "trainer/models/rms_norm_cpu_kernel.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/parallel_for.h"
#include "trainer/models/vector_exp.h"

namespace fulcrum::models {
namespace {

// Rows of ~32K elements per task: large enough that a task's overhead is
// noise, small enough that 2 threads split a layer's rows evenly.
constexpr int64_t kGrainElements = int64_t{32} << 10;
// The weight's gradient sums blocks of this many rows, then the blocks: a
// fixed split, so its bits do not depend on the thread count.
constexpr int64_t kWeightBlockRows = 32;

// One row's pointers: x, its 1/rms, the weight, and what the pass reads or
// writes (values; or the incoming gradient, x's gradient and the block's
// partial weight gradient).
struct Row {
  const float* x;
  float rstd;
  const float* weight;
  const float* grad;
  float* out;
  float* weight_partial;
};

__attribute__((target("avx2,fma"))) float HorizontalSum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}

__attribute__((target("avx2,fma"))) float SumOfSquaresAvx2(const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  float sum = HorizontalSum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

float SumOfSquares(const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

// Two roundings, as the ops: n = x * rstd, then weight * n.
__attribute__((target("avx2,fma"))) void ValuesRowAvx2(const Row& r, int64_t n) {
  const __m256 rstd = _mm256_set1_ps(r.rstd);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 normed = _mm256_mul_ps(_mm256_loadu_ps(r.x + i), rstd);
    _mm256_storeu_ps(r.out + i, _mm256_mul_ps(_mm256_loadu_ps(r.weight + i), normed));
  }
  for (; i < n; ++i) r.out[i] = r.weight[i] * (r.x[i] * r.rstd);
}

void ValuesRow(const Row& r, int64_t n) {
  for (int64_t i = 0; i < n; ++i) r.out[i] = r.weight[i] * (r.x[i] * r.rstd);
}

// With gw = grad * weight: rstd' = -rstd^3 / 2, mean' = 1 / n and
// (x^2)' = 2 x give dx = gw * rstd - x * rstd^3 * sum(gw * x) / n; and the
// weight's gradient adds grad * (x * rstd).
float InputCoefficient(float rstd, float dot, int64_t n) {
  return dot * (-0.5f * rstd * rstd * rstd) / static_cast<float>(n) * 2.0f;
}

__attribute__((target("avx2,fma"))) void BackwardRowAvx2(const Row& r, int64_t n) {
  if (r.out != nullptr) {
    __m256 a0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 gw = _mm256_mul_ps(_mm256_loadu_ps(r.grad + i), _mm256_loadu_ps(r.weight + i));
      a0 = _mm256_fmadd_ps(gw, _mm256_loadu_ps(r.x + i), a0);
    }
    float dot = HorizontalSum(a0);
    for (; i < n; ++i) dot += r.grad[i] * r.weight[i] * r.x[i];
    const float c = InputCoefficient(r.rstd, dot, n);
    const __m256 coefficient = _mm256_set1_ps(c), rstd = _mm256_set1_ps(r.rstd);
    for (i = 0; i + 8 <= n; i += 8) {
      const __m256 gw = _mm256_mul_ps(_mm256_loadu_ps(r.grad + i), _mm256_loadu_ps(r.weight + i));
      _mm256_storeu_ps(r.out + i, _mm256_fmadd_ps(coefficient, _mm256_loadu_ps(r.x + i),
                                                  _mm256_mul_ps(gw, rstd)));
    }
    for (; i < n; ++i) r.out[i] = c * r.x[i] + r.grad[i] * r.weight[i] * r.rstd;
  }
  if (r.weight_partial != nullptr) {
    const __m256 rstd = _mm256_set1_ps(r.rstd);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 normed = _mm256_mul_ps(_mm256_loadu_ps(r.x + i), rstd);
      _mm256_storeu_ps(r.weight_partial + i,
                       _mm256_fmadd_ps(_mm256_loadu_ps(r.grad + i), normed,
                                       _mm256_loadu_ps(r.weight_partial + i)));
    }
    for (; i < n; ++i) r.weight_partial[i] += r.grad[i] * (r.x[i] * r.rstd);
  }
}

void BackwardRow(const Row& r, int64_t n) {
  if (r.out != nullptr) {
    float dot = 0.0f;
    for (int64_t i = 0; i < n; ++i) dot += r.grad[i] * r.weight[i] * r.x[i];
    const float c = InputCoefficient(r.rstd, dot, n);
    for (int64_t i = 0; i < n; ++i) r.out[i] = c * r.x[i] + r.grad[i] * r.weight[i] * r.rstd;
  }
  if (r.weight_partial != nullptr) {
    for (int64_t i = 0; i < n; ++i) r.weight_partial[i] += r.grad[i] * (r.x[i] * r.rstd);
  }
}

int64_t Grain(int64_t cols) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols));
}

const float* Data(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* MutableData(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace

bool RmsNormCpuKernelTakes(std::initializer_list<torch::Tensor> tensors) {
  for (const torch::Tensor& t : tensors) {
    if (t.defined() && (!t.device().is_cpu() || t.scalar_type() != torch::kFloat ||
                        !t.is_contiguous() || t.dim() == 0)) {
      return false;
    }
  }
  return true;
}

torch::Tensor RmsNormStatisticsCpu(const torch::Tensor& x, double eps) {
  FULCRUM_CHECK(RmsNormCpuKernelTakes({x}), "RmsNormStatisticsCpu of ", c10::str(x.sizes()));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = 1;
  torch::Tensor rstd = torch::empty(shape, x.options());
  const int64_t cols = x.size(-1), rows = x.numel() / std::max<int64_t>(1, cols);
  const float* in = Data(x);
  float* out = MutableData(rstd);
  const bool avx2 = HasAvx2Fma();
  const float epsilon = static_cast<float>(eps);
  ParallelFor(0, rows, Grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = in + r * cols;
      const float sum = avx2 ? SumOfSquaresAvx2(row, cols) : SumOfSquares(row, cols);
      out[r] = 1.0f / std::sqrt(sum / static_cast<float>(cols) + epsilon);
    }
  });
  return rstd;
}

torch::Tensor RmsNormValuesCpu(const torch::Tensor& x, const torch::Tensor& rstd,
                               const torch::Tensor& weight) {
  FULCRUM_CHECK(RmsNormCpuKernelTakes({x, rstd, weight}) && weight.dim() == 1 &&
                    x.size(-1) == weight.size(0) && rstd.numel() * weight.size(0) == x.numel(),
                "RmsNormValuesCpu of ", c10::str(x.sizes()));
  torch::Tensor out = torch::empty(x.sizes(), x.options());
  const int64_t cols = x.size(-1), rows = rstd.numel();
  const float *in = Data(x), *rstd_at = Data(rstd), *weight_at = Data(weight);
  float* out_at = MutableData(out);
  const bool avx2 = HasAvx2Fma();
  ParallelFor(0, rows, Grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Row row{in + r * cols, rstd_at[r], weight_at, nullptr, out_at + r * cols, nullptr};
      avx2 ? ValuesRowAvx2(row, cols) : ValuesRow(row, cols);
    }
  });
  return out;
}

RmsNormGradsCpu RmsNormBackwardCpu(const torch::Tensor& x, const torch::Tensor& rstd,
                                   const torch::Tensor& weight, const torch::Tensor& grad,
                                   bool x_gradient, bool weight_gradient) {
  FULCRUM_CHECK(RmsNormCpuKernelTakes({x, rstd, weight, grad}) && weight.dim() == 1 &&
                    x.size(-1) == weight.size(0) && rstd.numel() * weight.size(0) == x.numel() &&
                    grad.sizes() == x.sizes(),
                "RmsNormBackwardCpu of ", c10::str(x.sizes()));
  const int64_t cols = x.size(-1), rows = rstd.numel();
  const int64_t blocks = (rows + kWeightBlockRows - 1) / kWeightBlockRows;
  RmsNormGradsCpu grads;
  if (x_gradient) grads.x = torch::empty(x.sizes(), x.options());
  torch::Tensor partials;  // [blocks, cols]: each block's sum over its rows
  if (weight_gradient) partials = torch::zeros({blocks, cols}, x.options());
  const float *x_at = Data(x), *rstd_at = Data(rstd), *weight_at = Data(weight);
  const float* grad_at = Data(grad);
  float *dx_at = MutableData(grads.x), *partials_at = MutableData(partials);
  const bool avx2 = HasAvx2Fma();
  const int64_t block_grain = std::max<int64_t>(1, Grain(cols) / kWeightBlockRows);
  ParallelFor(0, blocks, block_grain, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      float* partial = partials_at != nullptr ? partials_at + block * cols : nullptr;
      const int64_t last = std::min(rows, (block + 1) * kWeightBlockRows);
      for (int64_t r = block * kWeightBlockRows; r < last; ++r) {
        const Row row{x_at + r * cols,
                      rstd_at[r],
                      weight_at,
                      grad_at + r * cols,
                      dx_at != nullptr ? dx_at + r * cols : nullptr,
                      partial};
        avx2 ? BackwardRowAvx2(row, cols) : BackwardRow(row, cols);
      }
    }
  });
  if (weight_gradient) {
    // The blocks in order, a run of columns per task.
    grads.weight = torch::empty({cols}, x.options());
    const float* in = Data(partials);
    float* out = MutableData(grads.weight);
    ParallelFor(0, cols, std::max<int64_t>(64, kGrainElements / std::max<int64_t>(1, blocks)),
                [&](int64_t begin, int64_t end) {
                  std::copy(in + begin, in + end, out + begin);
                  for (int64_t block = 1; block < blocks; ++block) {
                    const float* p = in + block * cols;
                    for (int64_t c = begin; c < end; ++c) out[c] += p[c];
                  }
                });
  }
  return grads;
}

}  // namespace fulcrum::models
