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

// T: float or c10::BFloat16 (computed in fp32, each result rounded once).
template <typename T>
struct Row {
  const T* gate;
  const T* up;
  T* out;     // p (forward) or dp, then d_up in place (backward)
  T* d_gate;  // backward, may be null
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

__attribute__((target("avx2,fma"))) inline __m256 Load8(const float* p) {
  return _mm256_loadu_ps(p);
}
__attribute__((target("avx2,fma"))) inline void Store8(float* p, __m256 v) {
  _mm256_storeu_ps(p, v);
}
// bf16 is fp32's upper half.
__attribute__((target("avx2,fma"))) inline __m256 Load8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
// Rounded to nearest even, a NaN to a quiet NaN, as c10::BFloat16(float).
__attribute__((target("avx2,fma"))) inline void Store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc00000), nan);
  // 8 x 32 -> 8 x 16 bits: packus works per 128-bit lane, the permute joins them.
  const __m256i high = _mm256_srli_epi32(rounded, 16);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

template <typename T>
void ForwardRow(const Row<T>& r, int64_t begin, int64_t cols) {
  for (int64_t i = begin; i < cols; ++i) {
    const float g = static_cast<float>(r.gate[i]);
    r.out[i] = static_cast<T>(g * Sigmoid(g) * static_cast<float>(r.up[i]));
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) void ForwardRowAvx2(const Row<T>& r, int64_t cols) {
  const int64_t whole = cols / 8 * 8;
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 g = Load8(r.gate + i);
    const __m256 silu = _mm256_mul_ps(g, Sigmoid8(g));
    Store8(r.out + i, _mm256_mul_ps(silu, Load8(r.up + i)));
  }
  ForwardRow(r, whole, cols);
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
template <typename T>
void BackwardRow(const Row<T>& r, int64_t begin, int64_t cols, bool up_gradient) {
  for (int64_t i = begin; i < cols; ++i) {
    const float g = static_cast<float>(r.gate[i]), dp = static_cast<float>(r.out[i]);
    const float s = Sigmoid(g);
    if (r.d_gate != nullptr) {
      r.d_gate[i] =
          static_cast<T>(dp * static_cast<float>(r.up[i]) * (s * (1.0f + g * (1.0f - s))));
    }
    if (up_gradient) r.out[i] = static_cast<T>(dp * (g * s));
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) void BackwardRowAvx2(const Row<T>& r, int64_t cols,
                                                         bool up_gradient) {
  const int64_t whole = cols / 8 * 8;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 g = Load8(r.gate + i);
    const __m256 dp = Load8(r.out + i);
    const __m256 s = Sigmoid8(g);
    if (r.d_gate != nullptr) {
      const __m256 slope =
          _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s))));
      Store8(r.d_gate + i, _mm256_mul_ps(_mm256_mul_ps(dp, Load8(r.up + i)), slope));
    }
    if (up_gradient) Store8(r.out + i, _mm256_mul_ps(dp, _mm256_mul_ps(g, s)));
  }
  BackwardRow(r, whole, cols, up_gradient);
}

// f(row r) for every row, in parallel over tasks of kGrainElements.
template <typename F>
void ForRows(int64_t rows, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols));
  ParallelFor(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

template <typename T>
const T* RowOf(const torch::Tensor& x, int64_t r) {
  return x.data_ptr<T>() + r * x.stride(0);
}
template <typename T>
T* MutableRowOf(const torch::Tensor& x, int64_t r) {
  return x.defined() ? x.data_ptr<T>() + r * x.stride(0) : nullptr;
}

template <typename T>
void Forward(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& out) {
  const int64_t cols = gate.size(1);
  const bool avx2 = HasAvx2Fma();
  ForRows(gate.size(0), cols, [&](int64_t r) {
    const Row<T> row{RowOf<T>(gate, r), RowOf<T>(up, r), MutableRowOf<T>(out, r), nullptr};
    avx2 ? ForwardRowAvx2(row, cols) : ForwardRow(row, 0, cols);
  });
}

template <typename T>
void Backward(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& dp,
              const torch::Tensor& d_gate, bool up_gradient) {
  const int64_t cols = gate.size(1);
  const bool avx2 = HasAvx2Fma();
  ForRows(gate.size(0), cols, [&](int64_t r) {
    const Row<T> row{RowOf<T>(gate, r), RowOf<T>(up, r), MutableRowOf<T>(dp, r),
                     MutableRowOf<T>(d_gate, r)};
    avx2 ? BackwardRowAvx2(row, cols, up_gradient) : BackwardRow(row, 0, cols, up_gradient);
  });
}

}  // namespace

bool SwiGluCpuKernelTakes(std::initializer_list<torch::Tensor> tensors) {
  const torch::Tensor& first = *tensors.begin();
  if (first.scalar_type() != torch::kFloat && first.scalar_type() != torch::kBFloat16) return false;
  for (const torch::Tensor& x : tensors) {
    if (!x.defined()) continue;
    if (!x.device().is_cpu() || x.scalar_type() != first.scalar_type() || x.dim() != 2 ||
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
  gate.scalar_type() == torch::kFloat ? Forward<float>(gate, up, out)
                                      : Forward<c10::BFloat16>(gate, up, out);
  return out;
}

void SwiGluBackwardCpu(const torch::Tensor& gate, const torch::Tensor& up, const torch::Tensor& dp,
                       const torch::Tensor& d_gate, bool up_gradient) {
  FULCRUM_CHECK(SwiGluCpuKernelTakes({gate, up, dp, d_gate}), "SwiGluBackwardCpu of ",
                c10::str(gate.sizes()));
  gate.scalar_type() == torch::kFloat ? Backward<float>(gate, up, dp, d_gate, up_gradient)
                                      : Backward<c10::BFloat16>(gate, up, dp, d_gate, up_gradient);
}

}  // namespace fulcrum::models
