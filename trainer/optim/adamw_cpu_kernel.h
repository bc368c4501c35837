// The AdamW update over one contiguous fp32 range on the CPU, in one pass.
//
// The sliced torch ops it replaces (adamw_update.cc) made nine passes over
// each cache-sized slice, each its own parallel region: bound by their
// arithmetic and per-op overhead, 13 GB/s of state against 18 GB/s for a
// plain copy. One vectorised pass reads master, moments and gradient once and
// writes master and moments once: 27-33 GB/s on the same host (64M
// parameters, 2 threads). It also applies the gradient-norm clip as it reads
// the gradient, which spares the clip its own pass (read and write) over
// every gradient.
//
// Numerics: the ops and their order are torch::optim::AdamW's as ATen's
// vectorised CPU kernels run them (`exp_avg.mul_(b1).add_(g, 1 - b1)` is one
// fused multiply-add there, and here), each scalar rounded to fp32 as ATen
// does; the clip's g * scale is the one fp32 multiply its g.mul_(scale) was.
// Every element's result depends on its inputs only, not on its place
// or on the CPU's vector width: slices, ZeRO-1 shards and threads change no
// bit (the file is compiled without floating-point contraction).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace fulcrum::optim {

struct AdamWCpuScalars {
  bool decay = false;      // master *= decay_factor first
  float decay_factor = 1;  // 1 - lr * weight_decay
  float beta1 = 0, one_minus_beta1 = 0;
  float beta2 = 0, one_minus_beta2 = 0;
  float sqrt_bias_correction2 = 1;
  float eps = 0;
  float step_size = 0;   // -lr / bias_correction1
  float grad_scale = 1;  // the gradient is read as grad * grad_scale (the clip coefficient)
};

// Elements [0, n) of each array, updated in place; the arrays do not overlap.
// A 16-bit model's gradient comes as bf16 (widened exactly, as .to(fp32)),
// and `rounded`, where not null, receives the updated master rounded to bf16
// (to nearest even, as .copy_ of the master into the bf16 parameter): one
// pass instead of a converted fp32 copy of every gradient and a pass over
// every parameter after.
void AdamWCpuKernel(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const float* grad, c10::BFloat16* rounded, int64_t n);
void AdamWCpuKernel(const AdamWCpuScalars& s, float* master, float* exp_avg, float* exp_avg_sq,
                    const c10::BFloat16* grad, c10::BFloat16* rounded, int64_t n);

}  // namespace fulcrum::optim
