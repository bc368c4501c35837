#include "trainer/models/attention.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "parallel/tensor/tensor_parallel.h"
#include "trainer/lora/column_group.h"
#include "trainer/models/attention_core.h"
#include "trainer/models/torch_compat.h"

namespace fulcrum::models {

torch::Tensor GroupedAttention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask, double scale) {
  if (compat::RunsFusedAttention(q.device())) {
    // The fused kernel wants equal head counts; expand is a view, the reshape
    // copies once (as HF repeat_kv).
    const int64_t b = q.size(0), h = q.size(1), d = q.size(3);
    const int64_t hkv = k.size(1), s = k.size(2);  // s = t without a cache
    FULCRUM_CHECK(h % hkv == 0, "heads=", h, " kv_heads=", hkv);
    const auto repeat = [&](const torch::Tensor& x) {
      return x.unsqueeze(2).expand({b, hkv, h / hkv, s, d}).reshape({b, h, s, d});
    };
    return compat::FusedAttention(q, repeat(k), repeat(v), mask, scale);
  }
  return EagerAttention(q, k, v, mask, scale);
}

AttentionImpl::AttentionImpl(const ModelConfig& config, const torch::TensorOptions& options,
                             const ModelParallel& parallel)
    : head_dim_(config.head_dim) {
  const HeadShard heads = ShardHeads(config.num_heads, config.num_kv_heads, parallel.tp);
  num_heads_ = heads.num_heads;
  num_kv_heads_ = heads.num_kv_heads;
  const int64_t hidden = config.hidden_size, d = head_dim_;
  const int64_t q_out = config.num_heads * d, kv_out = config.num_kv_heads * d;
  // q, k and v share one entry into the tp region (Project).
  const auto column = [&](const char* name) {
    lora::LinearParallel out = ProjectionParallel(name, parallel);
    out.input_in_region = true;
    return out;
  };
  lora::LinearParallel kv = column("k_proj");
  // Explicit rows: with kv replication they are not an even split of kv_out.
  kv.out_rows = fulcrum::parallel::tensor::ShardRange{heads.first_kv_head * d, num_kv_heads_ * d};
  lora::LinearParallel v = column("v_proj");
  v.out_rows = kv.out_rows;
  // Registration order = HF parameter order (q, k, v, o, q_norm, k_norm).
  q_proj = register_module(
      "q_proj", lora::LoraLinear(hidden, q_out, config.attention_bias, options, column("q_proj")));
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

AttentionImpl::Projected AttentionImpl::Project(const RmsNormOutput& x, const RopeCosSin& rope) {
  // [B, T, H*D] -> [B, T, H, D]; Qwen3 normalises each head before RoPE.
  // T from the projection: under sp x holds T/tp positions, q/k/v all T.
  const std::vector<torch::Tensor> qkv =
      lora::ForwardColumnGroup(x, {q_proj.get(), k_proj.get(), v_proj.get()});
  const int64_t b = qkv[0].size(0), t = qkv[0].size(1);
  torch::Tensor q = qkv[0].view({b, t, num_heads_, head_dim_});
  torch::Tensor k = qkv[1].view({b, t, num_kv_heads_, head_dim_});
  torch::Tensor v = qkv[2].view({b, t, num_kv_heads_, head_dim_});
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
  if (q_norm) q_norm->SetRecompute(recompute);
  if (k_norm) k_norm->SetRecompute(recompute);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RopeCosSin& rope,
                                     const torch::Tensor& mask) {
  return forward(RmsNormOutput::OutputOnly(x), rope, mask);
}

torch::Tensor AttentionImpl::forward(const RmsNormOutput& x, const RopeCosSin& rope,
                                     const torch::Tensor& mask) {
  const Projected p = Project(x, rope);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  return Output(GroupedAttention(p.q, p.k, p.v, mask, scale));
}

torch::Tensor AttentionImpl::ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                                           const torch::Tensor& mask, generate::KvCache& cache,
                                           int64_t layer_index) {
  const Projected p = Project(RmsNormOutput::OutputOnly(x), rope);
  const generate::KvView past = cache.Write(layer_index, p.k, p.v);  // [B, Hkv, S, D]
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  return Output(GroupedAttention(p.q, past.k, past.v, mask, scale));
}

}  // namespace fulcrum::models
