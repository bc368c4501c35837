#include "trainer/optim/adamw_cpu_kernel.h"

#include <cmath>
#include <cstdint>

// Built with -ffp-contract=off and -fno-math-errno (CMakeLists.txt): no
// multiply-add is fused but the one written as std::fma, and sqrt vectorises.

namespace fulcrum::optim {
namespace {

float Widen(float g) { return g; }
float Widen(c10::BFloat16 g) { return c10::detail::f32_from_bits(g.x); }

// ATen's order per element (its AVX2 kernels), after the clip's g * scale:
// master * decay; fma(g, 1 - b1, exp_avg * b1); fma((1 - b2) * g, g,
// exp_avg_sq * b2); denom = sqrt(v) / bc2 + eps; master + (step_size *
// exp_avg) / denom.
template <typename G, bool kRound>
__attribute__((always_inline)) inline void Update(const AdamWCpuScalars& s,
                                                  float* __restrict master,
                                                  float* __restrict exp_avg,
                                                  float* __restrict exp_avg_sq,
                                                  const G* __restrict grad,
                                                  uint16_t* __restrict rounded, int64_t n) {
  const float decay = s.decay ? s.decay_factor : 1.0f;
  const bool decayed = s.decay;
  for (int64_t i = 0; i < n; ++i) {
    const float g = Widen(grad[i]) * s.grad_scale;
    const float p = decayed ? master[i] * decay : master[i];
    const float m = std::fma(g, s.one_minus_beta1, exp_avg[i] * s.beta1);
    const float v = std::fma(s.one_minus_beta2 * g, g, exp_avg_sq[i] * s.beta2);
    const float denom = std::sqrt(v) / s.sqrt_bias_correction2 + s.eps;
    const float updated = p + (s.step_size * m) / denom;
    master[i] = updated;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if constexpr (kRound) rounded[i] = c10::detail::round_to_nearest_even(updated);
  }
}

template <typename G, bool kRound>
__attribute__((target("avx2,fma"))) void UpdateAvx2(const AdamWCpuScalars& s, float* master,
                                                    float* exp_avg, float* exp_avg_sq,
                                                    const G* grad, uint16_t* rounded, int64_t n) {
  Update<G, kRound>(s, master, exp_avg, exp_avg_sq, grad, rounded, n);
}

template <typename G, bool kRound>
void UpdateBaseline(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const G* grad, uint16_t* rounded, int64_t n) {
  Update<G, kRound>(s, master, exp_avg, exp_avg_sq, grad, rounded, n);
}

bool HasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

template <typename G>
void Dispatch(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
              const G* grad, c10::BFloat16* rounded, int64_t n) {
  // c10::BFloat16 is its bits (one uint16_t member).
  uint16_t* bits = reinterpret_cast<uint16_t*>(rounded);
  if (HasAvx2Fma()) {
    return rounded != nullptr ? UpdateAvx2<G, true>(s, master, exp_avg, exp_avg_sq, grad, bits, n)
                              : UpdateAvx2<G, false>(s, master, exp_avg, exp_avg_sq, grad, bits, n);
  }
  rounded != nullptr ? UpdateBaseline<G, true>(s, master, exp_avg, exp_avg_sq, grad, bits, n)
                     : UpdateBaseline<G, false>(s, master, exp_avg, exp_avg_sq, grad, bits, n);
}

}  // namespace

void AdamWCpuKernel(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const float* grad, c10::BFloat16* rounded, int64_t n) {
  Dispatch(s, master, exp_avg, exp_avg_sq, grad, rounded, n);
}

void AdamWCpuKernel(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const c10::BFloat16* grad, c10::BFloat16* rounded, int64_t n) {
  Dispatch(s, master, exp_avg, exp_avg_sq, grad, rounded, n);
}

}  // namespace fulcrum::optim
