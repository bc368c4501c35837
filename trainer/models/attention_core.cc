#include "trainer/models/attention_core.h"

#include "core/check.h"

namespace fulcrum::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// qg [B, Hkv, G*T, Dqk] (the G query heads of a kv head stacked along
// time), k [B, Hkv, S, Dqk] -> fp32 scores q k^T * scale + mask
// [B, Hkv, G*T, S]. Scale and mask are applied in the input dtype, as HF's
// `matmul * scale + mask` before softmax(dtype=float32).
torch::Tensor MaskedScores(const torch::Tensor& qg, const torch::Tensor& k,
                           const torch::Tensor& mask, double scale) {
  const int64_t b = qg.size(0), hkv = qg.size(1), s = k.size(2), t = mask.size(2);
  const int64_t g = qg.size(2) / t;
  torch::Tensor scores = torch::matmul(qg, k.transpose(-1, -2)).mul_(scale);
  const torch::Tensor grouped = scores.view({b, hkv, g, t, s});
  const torch::Tensor mask5 = mask.unsqueeze(2);  // [B, 1, 1, T, S]
  // In place unless the mask's dtype would promote the sum (then as HF).
  if (mask.scalar_type() == scores.scalar_type()) {
    grouped.add_(mask5);
  } else {
    scores = (grouped + mask5).view({b, hkv, g * t, s});
  }
  return scores.to(torch::kFloat);  // the same tensor when fp32
}

// q [B, H, T, D] -> [B, Hkv, G*T, D] (a copy unless q is contiguous).
torch::Tensor Grouped(const torch::Tensor& q, int64_t hkv) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2);
  FULCRUM_CHECK(h % hkv == 0, "heads=", h, " kv_heads=", hkv);
  return q.reshape({b, hkv, h / hkv * t, q.size(3)});
}

class ProbabilityFreeAttention : public torch::autograd::Function<ProbabilityFreeAttention> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask, double scale) {
    const torch::Tensor qg = Grouped(q, k.size(1));
    const torch::Tensor scores = MaskedScores(qg, k, mask, scale);
    const torch::Tensor probs = torch::softmax(scores, -1);
    // softmax = exp(x - max) * (1 / sum), and the largest probability is
    // exp(0) * (1 / sum): two read-only passes give what the backward needs
    // to rebuild the probabilities as softmax did. (Not the log-sum-exp: on
    // a fully masked row it rounds to the mask value and exp(x - lse) = 1.)
    const torch::Tensor row_max = scores.amax(-1, /*keepdim=*/true);  // [B, Hkv, G*T, 1]
    const torch::Tensor inv_sum = probs.amax(-1, /*keepdim=*/true);
    ctx->save_for_backward({qg, k, v, mask, row_max, inv_sum});
    ctx->saved_data["scale"] = scale;
    const torch::Tensor out = torch::matmul(probs.to(q.scalar_type()), v);  // [B, Hkv, G*T, Dv]
    return out.view({q.size(0), q.size(1), q.size(2), v.size(3)});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &qg = saved[0], &k = saved[1], &v = saved[2], &mask = saved[3],
                        &row_max = saved[4], &inv_sum = saved[5];
    const double scale = ctx->saved_data["scale"].toDouble();
    const torch::ScalarType dtype = qg.scalar_type();
    const torch::Tensor grad_out = grad_outputs[0];  // [B, H, T, Dv]
    const torch::Tensor dog = Grouped(grad_out, k.size(1));

    // The probabilities again, in fp32.
    const torch::Tensor probs = MaskedScores(qg, k, mask, scale).sub_(row_max).exp_().mul_(inv_sum);
    const torch::Tensor dv = torch::matmul(probs.to(dtype).transpose(-1, -2), dog);
    // Softmax backward in fp32, in place on dP: dS = P * dP - P * rowsum(P * dP).
    torch::Tensor ds = torch::matmul(dog, v.transpose(-1, -2)).to(torch::kFloat).mul_(probs);
    ds.addcmul_(probs, ds.sum(-1, /*keepdim=*/true), -1.0);
    // Through `* scale` in the input dtype, as the eager graph.
    ds = ds.to(dtype).mul_(scale);
    const torch::Tensor dqg = torch::matmul(ds, k);                    // [B, Hkv, G*T, Dqk]
    const torch::Tensor dk = torch::matmul(ds.transpose(-1, -2), qg);  // [B, Hkv, S, Dqk]
    const torch::Tensor dq = dqg.view({qg.size(0), grad_out.size(1), grad_out.size(2), qg.size(3)});
    return {dq, dk, dv, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor EagerAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale) {
  const bool differentiable = torch::GradMode::is_enabled() &&
                              (q.requires_grad() || k.requires_grad() || v.requires_grad());
  // An undefined mask (causal only) is for the fused kernels alone.
  FULCRUM_CHECK(mask.defined(), "the eager attention needs its additive mask");
  FULCRUM_CHECK(!mask.requires_grad(), "the attention mask is not differentiable here");
  if (differentiable) return ProbabilityFreeAttention::apply(q, k, v, mask, scale);
  // Inference and generation: nothing is kept, so the plain graph.
  const torch::Tensor qg = Grouped(q, k.size(1));
  const torch::Tensor probs =
      torch::softmax(MaskedScores(qg, k, mask, scale), -1).to(q.scalar_type());
  return torch::matmul(probs, v).view({q.size(0), q.size(1), q.size(2), v.size(3)});
}

}  // namespace fulcrum::models
