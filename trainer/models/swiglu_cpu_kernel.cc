#include "trainer/models/swiglu_cpu_kernel.h"

#include <immintrin.h>

#include <cmath>

#include "core/check.h"
#include "core/parallel_for.h"
#include "trainer/models/vector_exp.h"

namespace fulcrum::models {
namespace {

// Rows of ~32K elements per task: large enough that a task's overhead is
// noise, small enough that 2 threads split a layer's rows evenly.
constexpr int64_t kGrainElements = int64_t{32} << 10;

struct Row {
  const float* gate;
  const float* up;
  float* out;     // p (forward) or dp, then d_up in place (backward)
  float* d_gate;  // backward, may be null
};

float Sigmoid(float x) {
  const float e = std::exp(-std::fabs(x));
  const float inv = 1.0f / (1.0f + e);
  return x >= 0.0f ? inv : e * inv;
}

__attribute__((target("avx2,fma"))) inline __m256 Sigmoid8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 e = ExpNonPositive(_mm256_or_ps(x, sign));  // exp(-|x|)
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  return _mm256_blendv_ps(inv, _mm256_mul_ps(e, inv), negative);
}

__attribute__((target("avx2,fma"))) void ForwardRowAvx2(const Row& r, int64_t cols) {
  const int64_t whole = cols / 8 * 8;
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 g = _mm256_loadu_ps(r.gate + i);
    const __m256 silu = _mm256_mul_ps(g, Sigmoid8(g));
    _mm256_storeu_ps(r.out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(r.up + i)));
  }
  for (int64_t i = whole; i < cols; ++i) r.out[i] = r.gate[i] * Sigmoid(r.gate[i]) * r.up[i];
}

void ForwardRow(const Row& r, int64_t cols) {
  for (int64_t i = 0; i < cols; ++i) r.out[i] = r.gate[i] * Sigmoid(r.gate[i]) * r.up[i];
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
__attribute__((target("avx2,fma"))) void BackwardRowAvx2(const Row& r, int64_t cols,
                                                         bool up_gradient) {
  const int64_t whole = cols / 8 * 8;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 g = _mm256_loadu_ps(r.gate + i);
    const __m256 dp = _mm256_loadu_ps(r.out + i);
    const __m256 s = Sigmoid8(g);
    if (r.d_gate != nullptr) {
      const __m256 slope =
          _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s))));
      _mm256_storeu_ps(r.d_gate + i,
                       _mm256_mul_ps(_mm256_mul_ps(dp, _mm256_loadu_ps(r.up + i)), slope));
    }
    if (up_gradient) _mm256_storeu_ps(r.out + i, _mm256_mul_ps(dp, _mm256_mul_ps(g, s)));
  }
  for (int64_t i = whole; i < cols; ++i) {
    const float g = r.gate[i], dp = r.out[i], s = Sigmoid(g);
    if (r.d_gate != nullptr) r.d_gate[i] = dp * r.up[i] * (s * (1.0f + g * (1.0f - s)));
    if (up_gradient) r.out[i] = dp * (g * s);
  }
}

void BackwardRow(const Row& r, int64_t cols, bool up_gradient) {
  for (int64_t i = 0; i < cols; ++i) {
    const float g = r.gate[i], dp = r.out[i], s = Sigmoid(g);
    if (r.d_gate != nullptr) r.d_gate[i] = dp * r.up[i] * (s * (1.0f + g * (1.0f - s)));
    if (up_gradient) r.out[i] = dp * (g * s);
  }
}

// f(row r) for every row, in parallel over tasks of kGrainElements.
template <typename F>
void ForRows(int64_t rows, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols));
  ParallelFor(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

const float* RowOf(const torch::Tensor& x, int64_t r) {
  return x.data_ptr<float>() + r * x.stride(0);
}
float* MutableRowOf(const torch::Tensor& x, int64_t r) {
  return x.defined() ? x.data_ptr<float>() + r * x.stride(0) : nullptr;
}

}  // namespace

bool SwiGluCpuKernelTakes(std::initializer_list<torch::Tensor> tensors) {
  const torch::Tensor& first = *tensors.begin();
  for (const torch::Tensor& x : tensors) {
    if (!x.defined()) continue;
    if (!x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.dim() != 2 ||
        x.sizes() != first.sizes() || (x.size(1) > 1 && x.stride(1) != 1)) {
      return false;
    }
  }
  return true;
}

torch::Tensor SwiGluCpu(const torch::Tensor& gate, const torch::Tensor& up) {
  FULCRUM_CHECK(SwiGluCpuKernelTakes({gate, up}), "SwiGluCpu of ", c10::str(gate.sizes()), " and ",
                c10::str(up.sizes()));
  torch::Tensor out = torch::empty(gate.sizes(), gate.options());
  const int64_t cols = gate.size(1);
  const bool avx2 = HasAvx2Fma();
  ForRows(gate.size(0), cols, [&](int64_t r) {
    const Row row{RowOf(gate, r), RowOf(up, r), MutableRowOf(out, r), nullptr};
    avx2 ? ForwardRowAvx2(row, cols) : ForwardRow(row, cols);
  });
  return out;
}

void SwiGluBackwardCpu(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& dp,
                       const torch::Tensor& d_gate, bool up_gradient) {
  FULCRUM_CHECK(SwiGluCpuKernelTakes({gate, up, dp, d_gate}), "SwiGluBackwardCpu of ",
                c10::str(gate.sizes()));
  const int64_t cols = gate.size(1);
  const bool avx2 = HasAvx2Fma();
  ForRows(gate.size(0), cols, [&](int64_t r) {
    const Row row{RowOf(gate, r), RowOf(up, r), MutableRowOf(dp, r), MutableRowOf(d_gate, r)};
    avx2 ? BackwardRowAvx2(row, cols, up_gradient) : BackwardRow(row, cols, up_gradient);
  });
}

}  // namespace fulcrum::models
