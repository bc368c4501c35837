#include "trainer/models/attention.h"

#include <cmath>

#include "core/check.h"
#include "trainer/models/recompute.h"
#include "trainer/models/torch_compat.h"

namespace fulcrum::models {

torch::Tensor GroupedAttention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask, double scale) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t hkv = k.size(1), s = k.size(2);  // s = t without a cache
  FULCRUM_CHECK(h % hkv == 0, "heads=", h, " kv_heads=", hkv);
  const int64_t g = h / hkv;
  if (compat::kHasFusedAttention && q.is_cuda()) {
    // The fused kernel wants equal head counts; expand is a view, the reshape
    // copies once (as HF repeat_kv).
    const auto repeat = [&](const torch::Tensor& x) {
      return x.unsqueeze(2).expand({b, hkv, g, s, d}).reshape({b, h, s, d});
    };
    return compat::FusedAttention(q, repeat(k), repeat(v), mask, scale);
  }
  // [B, Hkv, G*T, D]: the G query heads sharing a kv head stacked along time.
  const torch::Tensor qg = q.reshape({b, hkv, g * t, d});
  torch::Tensor scores = torch::matmul(qg, k.transpose(-1, -2)) * scale;  // [B, Hkv, G*T, S]
  scores = scores.view({b, hkv, g, t, s}) + mask.unsqueeze(2);            // mask [B, 1, 1, T, S]
  const torch::Tensor probs = torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type());
  const torch::Tensor out = torch::matmul(probs.view({b, hkv, g * t, s}), v);  // [B, Hkv, G*T, D]
  return out.view({b, h, t, d});
}

torch::Tensor RunAttentionCore(AttentionCore core, bool recompute, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask, double scale) {
  if (!recompute || (compat::kHasFusedAttention && q.is_cuda())) return core(q, k, v, mask, scale);
  RecomputedRegion region;
  region.fn = [core, scale](const std::vector<torch::Tensor>& in, ForwardPass) {
    return core(in[0], in[1], in[2], in[3], scale);
  };
  return RunRecomputed(region, {q, k, v, mask});
}

AttentionImpl::AttentionImpl(const ModelConfig& config, const torch::TensorOptions& options,
                             const ModelParallel& parallel)
    : head_dim_(config.head_dim) {
  const HeadShard heads = ShardHeads(config.num_heads, config.num_kv_heads, parallel.tp);
  num_heads_ = heads.num_heads;
  num_kv_heads_ = heads.num_kv_heads;
  const int64_t hidden = config.hidden_size, d = head_dim_;
  const int64_t q_out = config.num_heads * d, kv_out = config.num_kv_heads * d;
  lora::LinearParallel kv = ProjectionParallel("k_proj", parallel);
  // Explicit rows: with kv replication they are not an even split of kv_out.
  kv.out_rows = fulcrum::parallel::tensor::ShardRange{heads.first_kv_head * d, num_kv_heads_ * d};
  lora::LinearParallel v = ProjectionParallel("v_proj", parallel);
  v.out_rows = kv.out_rows;
  // Registration order = HF parameter order (q, k, v, o, q_norm, k_norm).
  q_proj = register_module("q_proj", lora::LoraLinear(hidden, q_out, config.attention_bias, options,
                                                      ProjectionParallel("q_proj", parallel)));
  k_proj = register_module("k_proj",
                           lora::LoraLinear(hidden, kv_out, config.attention_bias, options, kv));
  v_proj = register_module("v_proj",
                           lora::LoraLinear(hidden, kv_out, config.attention_bias, options, v));
  o_proj = register_module("o_proj", lora::LoraLinear(q_out, hidden, config.o_proj_bias, options,
                                                      ProjectionParallel("o_proj", parallel)));
  if (config.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(head_dim_, config.rms_norm_eps, options));
    k_norm = register_module("k_norm", RMSNorm(head_dim_, config.rms_norm_eps, options));
  }
}

AttentionImpl::Projected AttentionImpl::Project(const torch::Tensor& x, const RopeCosSin& rope) {
  // [B, T, H*D] -> [B, T, H, D]; Qwen3 normalises each head before RoPE.
  // T from the projection: under sp x holds T/tp positions, q/k/v all T.
  torch::Tensor q = q_proj->forward(x);
  const int64_t b = q.size(0), t = q.size(1);
  q = q.view({b, t, num_heads_, head_dim_});
  torch::Tensor k = k_proj->forward(x).view({b, t, num_kv_heads_, head_dim_});
  torch::Tensor v = v_proj->forward(x).view({b, t, num_kv_heads_, head_dim_});
  if (q_norm) {
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  return Projected{ApplyRope(q.transpose(1, 2), rope),  // [B, H, T, D]
                   ApplyRope(k.transpose(1, 2), rope),  // [B, Hkv, T, D]
                   v.transpose(1, 2)};
}

torch::Tensor AttentionImpl::Output(const torch::Tensor& attended) {
  // [B, H, T, D] -> [B, T, H*D] -> [B, T, hidden]
  const int64_t b = attended.size(0), t = attended.size(2);
  return o_proj->forward(attended.transpose(1, 2).reshape({b, t, num_heads_ * head_dim_}));
}

void AttentionImpl::SetRecompute(bool recompute) {
  recompute_ = recompute;
  if (q_norm) q_norm->SetRecompute(recompute);
  if (k_norm) k_norm->SetRecompute(recompute);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RopeCosSin& rope,
                                     const torch::Tensor& mask) {
  const Projected p = Project(x, rope);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  return Output(RunAttentionCore(GroupedAttention, recompute_, p.q, p.k, p.v, mask, scale));
}

torch::Tensor AttentionImpl::ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                                           const torch::Tensor& mask, generate::KvCache& cache,
                                           int64_t layer_index) {
  const Projected p = Project(x, rope);
  const generate::KvView past = cache.Write(layer_index, p.k, p.v);  // [B, Hkv, S, D]
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  return Output(GroupedAttention(p.q, past.k, past.v, mask, scale));
}

}  // namespace fulcrum::models
