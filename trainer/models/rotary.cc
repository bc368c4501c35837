#include "trainer/models/rotary.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/parallel_for.h"

namespace fulcrum::models {
namespace {

// HF _compute_llama3_parameters: low frequencies (long wavelengths) are divided
// by `factor`, high ones kept, the band between interpolated smoothly.
torch::Tensor Llama3Scale(const torch::Tensor& inv_freq, const RopeScaling& s) {
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  const torch::Tensor smooth =
      (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  const torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  const torch::Tensor is_medium =
      (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(is_medium, smoothed, scaled);
}

// The yarn factor and the context its correction range is computed at. HF
// (4.57): with rope_scaling.original_max_position_embeddings the factor is
// max_position_embeddings / original (DeepSeek-V3 stores both), else
// rope_scaling.factor at max_position_embeddings.
struct YarnContext {
  double factor = 1.0;
  double original_context = 0.0;
};

YarnContext YarnContextOf(const RopeScaling& s, int64_t max_position_embeddings) {
  FULCRUM_CHECK(max_position_embeddings > 0, "yarn needs max_position_embeddings, got ",
                max_position_embeddings);
  if (s.original_max_position_embeddings > 0) {
    const double original = static_cast<double>(s.original_max_position_embeddings);
    return YarnContext{static_cast<double>(max_position_embeddings) / original, original};
  }
  return YarnContext{s.factor, static_cast<double>(max_position_embeddings)};
}

// HF find_correction_dim: the dim whose wavelength fits `rotations` times in
// `context` positions.
double CorrectionDim(double rotations, int64_t dim, double theta, double context) {
  return (static_cast<double>(dim) * std::log(context / (rotations * 2 * M_PI))) /
         (2 * std::log(theta));
}

// pos_freqs [head_dim/2] = theta^(2i/d) fp32 -> yarn's inv_freq [head_dim/2]:
// extrapolated (1/pos_freqs) below the correction range, interpolated
// (1/(factor pos_freqs)) above it, a linear ramp between.
torch::Tensor YarnScale(const torch::Tensor& pos_freqs, int64_t head_dim, double theta,
                        const RopeScaling& s, int64_t max_position_embeddings) {
  const YarnContext ctx = YarnContextOf(s, max_position_embeddings);
  const double beta_fast = s.beta_fast != 0.0 ? s.beta_fast : 32.0;
  const double beta_slow = s.beta_slow != 0.0 ? s.beta_slow : 1.0;
  double low = CorrectionDim(beta_fast, head_dim, theta, ctx.original_context);
  double high = CorrectionDim(beta_slow, head_dim, theta, ctx.original_context);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(head_dim - 1));
  if (low == high) high += 0.001;  // HF: prevents a division by zero
  const torch::Tensor ramp =
      ((torch::arange(head_dim / 2, torch::kFloat) - low) / (high - low)).clamp(0, 1);
  const torch::Tensor extrapolation_factor = 1 - ramp;  // 1 = keep the original frequency
  const torch::Tensor extrapolation = 1.0 / pos_freqs;
  const torch::Tensor interpolation = 1.0 / (ctx.factor * pos_freqs);
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

}  // namespace

double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

torch::Tensor RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& scaling,
                          int64_t max_position_embeddings) {
  FULCRUM_CHECK(head_dim % 2 == 0, "head_dim=", head_dim);
  // As HF: exponent in fp32, theta ** exponent in fp32, then 1 / that.
  const torch::Tensor exponent =
      torch::arange(0, head_dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(head_dim);
  const torch::Tensor pos_freqs = torch::pow(theta, exponent);
  if (scaling.type == "yarn") {
    return YarnScale(pos_freqs, head_dim, theta, scaling, max_position_embeddings);
  }
  torch::Tensor inv_freq = 1.0 / pos_freqs;
  if (scaling.type == "llama3") return Llama3Scale(inv_freq, scaling);
  if (scaling.type == "linear") return inv_freq / scaling.factor;
  FULCRUM_CHECK(scaling.type.empty(), "unvalidated rope type ", scaling.type);
  return inv_freq;
}

double RopeAttentionFactor(const RopeScaling& scaling, int64_t max_position_embeddings) {
  if (scaling.type != "yarn") return 1.0;
  if (scaling.attention_factor != 0.0) return scaling.attention_factor;
  // Without a max_position_embeddings the factor as written (callers that only
  // have the rope_scaling block).
  const double factor = max_position_embeddings > 0
                            ? YarnContextOf(scaling, max_position_embeddings).factor
                            : scaling.factor;
  if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0) {
    return YarnGetMscale(factor, scaling.mscale) / YarnGetMscale(factor, scaling.mscale_all_dim);
  }
  return YarnGetMscale(factor);
}

RopeCosSin ComputeRopeCosSin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                             torch::ScalarType dtype, double attention_factor) {
  // [B, T, 1] * [head_dim/2] -> [B, T, head_dim/2]; fp32 even under bf16.
  const torch::Tensor freqs = position_ids.to(torch::kFloat).unsqueeze(-1) *
                              inv_freq.to(position_ids.device(), torch::kFloat);
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);  // [B, 1, T, head_dim]
  if (attention_factor == 1.0) return RopeCosSin{emb.cos().to(dtype), emb.sin().to(dtype)};
  return RopeCosSin{(emb.cos() * attention_factor).to(dtype),
                    (emb.sin() * attention_factor).to(dtype)};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The rows of a [B, H, T, D] tensor (unit stride along D) and of the
// [B, 1, T, D] tables expanded to it, by flat row index (b, h, t).
struct RopeRows {
  int64_t heads, time, b_stride, h_stride, t_stride;
  int64_t table_b_stride, table_t_stride;
  int64_t Of(int64_t r) const {
    const int64_t t = r % time, h = r / time % heads, b = r / time / heads;
    return b * b_stride + h * h_stride + t * t_stride;
  }
  int64_t TableOf(int64_t r) const {
    const int64_t t = r % time, b = r / time / heads;
    return b * table_b_stride + t * table_t_stride;
  }
};

RopeRows RowsOf(const torch::Tensor& x, const torch::Tensor& table) {
  const torch::Tensor expanded = table.expand({x.size(0), 1, x.size(2), x.size(3)});
  return {x.size(1),   x.size(2),          x.stride(0),       x.stride(1),
          x.stride(2), expanded.stride(0), expanded.stride(2)};
}

// One row of D = 2 * half: y = x * c + rotate_half(x) * s, or (transpose)
// y = x * c + rotate_half^T(x * s). Rows do not overlap: restrict lets the
// compiler vectorise.
void RotateRow(const float* __restrict x, float* __restrict y, const float* __restrict c,
               const float* __restrict s, int64_t half, bool transpose) {
  if (!transpose) {
    for (int64_t i = 0; i < half; ++i) {
      y[i] = x[i] * c[i] - x[i + half] * s[i];
      y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      y[i] = x[i] * c[i] + x[i + half] * s[i + half];
      y[i + half] = x[i + half] * c[i + half] - x[i] * s[i];
    }
  }
}

// RotateRow over every row of in into out (their strides may differ), in
// parallel.
void RotateRows(const torch::Tensor& in, const torch::Tensor& out, const torch::Tensor& cos,
                const torch::Tensor& sin, bool transpose) {
  const RopeRows from = RowsOf(in, cos), to = RowsOf(out, cos);
  const int64_t half = in.size(3) / 2;
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  const int64_t rows = in.size(0) * in.size(1) * in.size(2);
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{16} << 10) / std::max<int64_t>(1, in.size(3)));
  ParallelFor(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t table = from.TableOf(r);
      RotateRow(x + from.Of(r), y + to.Of(r), c + table, s + table, half, transpose);
    }
  });
}

bool RopeKernelTakes(const torch::Tensor& x, const RopeCosSin& rope) {
  const auto takes = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 4 &&
           (t.size(3) <= 1 || t.stride(3) == 1);
  };
  return takes(x) && takes(rope.cos) && takes(rope.sin) && x.size(3) % 2 == 0 &&
         rope.cos.sizes() == rope.sin.sizes() && rope.cos.strides() == rope.sin.strides() &&
         rope.cos.size(1) == 1 && rope.cos.size(2) == x.size(2) && rope.cos.size(3) == x.size(3) &&
         (rope.cos.size(0) == 1 || rope.cos.size(0) == x.size(0)) && !rope.cos.requires_grad() &&
         !rope.sin.requires_grad();
}

// One pass each way on fp32 CPU tensors, where the ops' graph took five
// (neg, cat, two products, a sum) forward and as many backward. The output
// is [B, H, T, D] contiguous (the attention groups it without a copy); the
// gradient takes x's layout ([B, T, H, D] memory from the projection, whose
// view then needs no copy either).
class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    torch::Tensor out = torch::empty(x.sizes(), x.options());
    RotateRows(x, out, cos, sin, /*transpose=*/false);
    ctx->save_for_backward({cos, sin});
    // x's layout, as a permutation of its dims by decreasing stride.
    std::vector<int64_t> order = {0, 1, 2, 3};
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
    ctx->saved_data["order"] = order;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor dy =
        grad_outputs[0].stride(3) == 1 ? grad_outputs[0] : grad_outputs[0].contiguous();
    const std::vector<int64_t> order = ctx->saved_data["order"].toIntVector();
    std::vector<int64_t> sizes, inverse(4);
    for (size_t i = 0; i < order.size(); ++i) {
      sizes.push_back(dy.size(order[i]));
      inverse[order[i]] = static_cast<int64_t>(i);
    }
    const torch::Tensor dx = torch::empty(sizes, dy.options()).permute(inverse);
    RotateRows(dy, dx, saved[0], saved[1], /*transpose=*/true);
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ApplyRope(const torch::Tensor& x, const RopeCosSin& rope) {
  if (RopeKernelTakes(x, rope)) return RopeFunction::apply(x, rope.cos, rope.sin);
  const int64_t half = x.size(-1) / 2;
  const torch::Tensor x1 = x.narrow(-1, 0, half);
  const torch::Tensor x2 = x.narrow(-1, half, half);
  const torch::Tensor rotated = torch::cat({-x2, x1}, -1);
  return x * rope.cos + rotated * rope.sin;
}

}  // namespace fulcrum::models
