#include "trainer/optim/adamw_cpu_kernel.h"

#include <cmath>

// Built with -ffp-contract=off and -fno-math-errno (CMakeLists.txt): no
// multiply-add is fused but the one written as std::fma, and sqrt vectorises.

namespace fulcrum::optim {
namespace {

// ATen's order per element (its AVX2 kernels), after the clip's g * scale:
// master * decay;
// fma(g, 1 - b1, exp_avg * b1); fma((1 - b2) * g, g, exp_avg_sq * b2);
// denom = sqrt(v) / bc2 + eps; master + (step_size * exp_avg) / denom.
__attribute__((always_inline)) inline void Update(const AdamWCpuScalars& s,
                                                  float* __restrict master,
                                                  float* __restrict exp_avg,
                                                  float* __restrict exp_avg_sq,
                                                  const float* __restrict grad, int64_t n) {
  const float decay = s.decay ? s.decay_factor : 1.0f;
  const bool decayed = s.decay;
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * s.grad_scale;
    const float p = decayed ? master[i] * decay : master[i];
    const float m = std::fma(g, s.one_minus_beta1, exp_avg[i] * s.beta1);
    const float v = std::fma(s.one_minus_beta2 * g, g, exp_avg_sq[i] * s.beta2);
    const float denom = std::sqrt(v) / s.sqrt_bias_correction2 + s.eps;
    master[i] = p + (s.step_size * m) / denom;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}

__attribute__((target("avx2,fma"))) void UpdateAvx2(const AdamWCpuScalars& s, float* master,
                                                    float* exp_avg, float* exp_avg_sq,
                                                    const float* grad, int64_t n) {
  Update(s, master, exp_avg, exp_avg_sq, grad, n);
}

void UpdateBaseline(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const float* grad, int64_t n) {
  Update(s, master, exp_avg, exp_avg_sq, grad, n);
}

bool HasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace

void AdamWCpuKernel(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const float* grad, int64_t n) {
  if (HasAvx2Fma()) return UpdateAvx2(s, master, exp_avg, exp_avg_sq, grad, n);
  UpdateBaseline(s, master, exp_avg, exp_avg_sq, grad, n);
}

}  // namespace fulcrum::optim
