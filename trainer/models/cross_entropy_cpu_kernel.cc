#include "trainer/models/cross_entropy_cpu_kernel.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "trainer/models/vector_exp.h"

namespace fulcrum::models {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

__attribute__((target("avx2,fma"))) inline float Sum(__m256 x) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}

__attribute__((target("avx2,fma"))) inline float Max(__m256 x) {
  const __m128 half = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter)));
}

// One row: returns its loss; writes its gradient where `grad` is not null.
__attribute__((target("avx2,fma"))) float RowAvx2(const float* x, int64_t v, int64_t target,
                                                  float* grad) {
  const int64_t whole = v / 8 * 8;
  __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 bad = _mm256_setzero_ps();  // lanes that saw a NaN or +infinity
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 xi = _mm256_loadu_ps(x + i);
    max8 = _mm256_max_ps(max8, xi);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(xi, inf, _CMP_NLT_UQ));
  }
  float max = Max(max8);
  bool defined = _mm256_movemask_ps(bad) == 0;
  for (int64_t i = whole; i < v; ++i) {
    max = std::max(max, x[i]);
    defined = defined && x[i] < std::numeric_limits<float>::infinity();
  }
  if (!defined || max == -std::numeric_limits<float>::infinity()) {
    if (grad != nullptr) std::fill(grad, grad + v, kNaN);
    return kNaN;
  }
  const float target_logit = x[target];  // before grad, which may be x, is written
  const __m256 max_8 = _mm256_set1_ps(max);
  __m256 sum8 = _mm256_setzero_ps();
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 e = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), max_8));
    sum8 = _mm256_add_ps(sum8, e);
    if (grad != nullptr) _mm256_storeu_ps(grad + i, e);
  }
  float sum = Sum(sum8);
  for (int64_t i = whole; i < v; ++i) {
    const float e = std::exp(x[i] - max);
    sum += e;
    if (grad != nullptr) grad[i] = e;
  }
  if (grad != nullptr) {
    const float inv = 1.0f / sum;
    const __m256 inv8 = _mm256_set1_ps(inv);
    for (int64_t i = 0; i < whole; i += 8) {
      _mm256_storeu_ps(grad + i, _mm256_mul_ps(_mm256_loadu_ps(grad + i), inv8));
    }
    for (int64_t i = whole; i < v; ++i) grad[i] *= inv;
    grad[target] -= 1.0f;
  }
  // -log_softmax[target] in log_softmax's order: (x - max) - log(sum).
  return -((target_logit - max) - std::log(sum));
}

float RowBaseline(const float* x, int64_t v, int64_t target, float* grad) {
  float max = -std::numeric_limits<float>::infinity();
  bool defined = true;
  for (int64_t i = 0; i < v; ++i) {
    max = std::max(max, x[i]);
    defined = defined && x[i] < std::numeric_limits<float>::infinity();
  }
  if (!defined || max == -std::numeric_limits<float>::infinity()) {
    if (grad != nullptr) std::fill(grad, grad + v, kNaN);
    return kNaN;
  }
  const float target_logit = x[target];
  float sum = 0.0f;
  for (int64_t i = 0; i < v; ++i) {
    const float e = std::exp(x[i] - max);
    sum += e;
    if (grad != nullptr) grad[i] = e;
  }
  if (grad != nullptr) {
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < v; ++i) grad[i] *= inv;
    grad[target] -= 1.0f;
  }
  return -((target_logit - max) - std::log(sum));
}

}  // namespace

void CrossEntropyCpuKernel(const float* logits, int64_t ld, const int64_t* targets, int64_t rows,
                           int64_t v, int64_t ignore, float* row_loss, float* grad,
                           int64_t grad_ld) {
  const bool avx2 = HasAvx2Fma();
  for (int64_t r = 0; r < rows; ++r) {
    float* grad_row = grad != nullptr ? grad + r * grad_ld : nullptr;
    if (targets[r] == ignore) {
      row_loss[r] = 0.0f;
      if (grad_row != nullptr) std::fill(grad_row, grad_row + v, 0.0f);
      continue;
    }
    const float* row = logits + r * ld;
    row_loss[r] =
        avx2 ? RowAvx2(row, v, targets[r], grad_row) : RowBaseline(row, v, targets[r], grad_row);
  }
}

}  // namespace fulcrum::models
