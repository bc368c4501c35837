#include "trainer/models/mla_attention.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "parallel/tensor/tp_ops.h"
#include "trainer/models/attention.h"
#include "trainer/models/attention_core.h"
#include "trainer/models/torch_compat.h"

namespace fulcrum::models {
namespace {

// HF builds q_a_layernorm / kv_a_layernorm as DeepseekV2RMSNorm(rank) without
// passing rms_norm_eps: they always use the class default.
constexpr double kLatentNormEps = 1e-6;

// q, k [B, H, T|S, Dqk], v [B, H, S, Dv], mask [B, 1, T, S] additive ->
// [B, H, T, Dv]. Eager as HF: scores in the input dtype, softmax in fp32.
// (GroupedAttention's fused path assumes one head width for q, k and v.)
torch::Tensor LatentAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask, double scale) {
  if (compat::RunsFusedAttention(q.device())) {
    return compat::FusedAttention(q, k, v, mask, scale);  // SDPA allows Dv != Dqk
  }
  return EagerAttention(q, k, v, mask, scale);
}

// The shape of x with its last dim D split into [D/2, 2] (the rope pairs).
std::vector<int64_t> PairShape(const torch::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() /= 2;
  shape.push_back(2);
  return shape;
}

}  // namespace

double MlaSoftmaxScale(const ModelConfig& config) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(config.mla.qk_head_dim()));
  const RopeScaling& s = config.rope_scaling;
  // NOTE: as DeepSeek's own code (V2 and V3), HF's DeepseekV3Attention, vLLM
  // and HF after PR #47435. HF 4.57's DeepseekV2Attention omitted it (the bug
  // that PR fixed): with yarn, V2 here follows the checkpoint, not 4.57.
  if (s.type.empty() || s.mscale_all_dim == 0.0) return scale;
  const double mscale = YarnGetMscale(s.factor, s.mscale_all_dim);
  return scale * mscale * mscale;
}

torch::Tensor ApplyInterleavedRope(const torch::Tensor& x, const RopeCosSin& rope) {
  const int64_t half = x.size(-1) / 2;
  FULCRUM_CHECK(x.size(-1) % 2 == 0 && rope.cos.size(-1) >= half, "x last dim ", x.size(-1),
                " rope tables ", rope.cos.size(-1));
  // As HF DeepSeek-V2 (complex multiply in fp32): pair i is (re, im) =
  // (x[2i], x[2i+1]) times (cos_i, sin_i). Tables [B, 1, T, D] hold angle i
  // at i and i + D/2; the first half suffices.
  const torch::Tensor cos = rope.cos.narrow(-1, 0, half).to(torch::kFloat);  // [B, 1, T, D/2]
  const torch::Tensor sin = rope.sin.narrow(-1, 0, half).to(torch::kFloat);
  const torch::Tensor pairs = x.to(torch::kFloat).reshape(PairShape(x));  // [B, H, T, D/2, 2]
  const torch::Tensor re = pairs.select(-1, 0), im = pairs.select(-1, 1);
  const torch::Tensor rotated = torch::stack({re * cos - im * sin, re * sin + im * cos}, -1);
  return rotated.reshape(x.sizes()).to(x.scalar_type());
}

MlaAttentionImpl::MlaAttentionImpl(const ModelConfig& config, const torch::TensorOptions& options,
                                   const ModelParallel& parallel)
    : mla_(config.mla),
      tp_(parallel.tp),
      num_heads_(config.num_heads / parallel.tp.size()),
      scale_(MlaSoftmaxScale(config)) {
  FULCRUM_CHECK(mla_.enabled() && mla_.qk_rope_head_dim % 2 == 0 && mla_.v_head_dim > 0,
                "MLA config kv_lora_rank=", mla_.kv_lora_rank,
                " qk_rope_head_dim=", mla_.qk_rope_head_dim, " v_head_dim=", mla_.v_head_dim);
  FULCRUM_CHECK(config.num_heads % parallel.tp.size() == 0, "num_attention_heads ",
                config.num_heads, " % tp ", parallel.tp.size(), " != 0");
  const int64_t hidden = config.hidden_size, h = config.num_heads, qk = mla_.qk_head_dim();
  const bool bias = config.attention_bias;  // HF: q_a, kv_a and o only; q/q_b/kv_b never
  // Under tp the per-head projections (q or q_b, kv_b) are column-parallel
  // by heads and o row-parallel; the latent projections and their norms are
  // replicated. The per-head projections read full-sequence latents, so
  // their input is copied into the tp region, never gathered.
  lora::LinearParallel by_heads;
  by_heads.shard = lora::LinearShard::kColumn;
  by_heads.tp = parallel.tp;
  by_heads.tp.sequence_parallel = false;
  // Registration order = HF parameter order.
  if (mla_.q_lora_rank == 0) {
    q_proj = register_module("q_proj", lora::LoraLinear(hidden, h * qk, false, options, by_heads));
  } else {
    q_a_proj =
        register_module("q_a_proj", lora::LoraLinear(hidden, mla_.q_lora_rank, bias, options));
    q_a_layernorm =
        register_module("q_a_layernorm", RMSNorm(mla_.q_lora_rank, kLatentNormEps, options));
    q_b_proj = register_module(
        "q_b_proj", lora::LoraLinear(mla_.q_lora_rank, h * qk, false, options, by_heads));
  }
  kv_a_proj_with_mqa = register_module(
      "kv_a_proj_with_mqa",
      lora::LoraLinear(hidden, mla_.kv_lora_rank + mla_.qk_rope_head_dim, bias, options));
  kv_a_layernorm =
      register_module("kv_a_layernorm", RMSNorm(mla_.kv_lora_rank, kLatentNormEps, options));
  kv_b_proj =
      register_module("kv_b_proj", lora::LoraLinear(mla_.kv_lora_rank,
                                                    h * (mla_.qk_nope_head_dim + mla_.v_head_dim),
                                                    false, options, by_heads));
  o_proj = register_module("o_proj", lora::LoraLinear(h * mla_.v_head_dim, hidden, bias, options,
                                                      ProjectionParallel("o_proj", parallel)));
}

MlaAttentionImpl::Projected MlaAttentionImpl::Project(const torch::Tensor& x,
                                                      const RopeCosSin& rope) {
  // Under sp every rank projects the whole sequence (replicated latents,
  // their gradient complete on every rank).
  const torch::Tensor tokens = tp_.active() && tp_.sequence_parallel
                                   ? parallel::tensor::GatherSpToReplicated(x, *tp_.group)
                                   : x;
  const int64_t b = tokens.size(0), t = tokens.size(1), h = num_heads_;
  const int64_t nope = mla_.qk_nope_head_dim, rope_dim = mla_.qk_rope_head_dim;
  const torch::Tensor q_flat =
      q_proj ? q_proj->forward(tokens)
             : q_b_proj->forward(q_a_layernorm->forward(q_a_proj->forward(tokens)));
  const torch::Tensor q = q_flat.view({b, t, h, mla_.qk_head_dim()}).transpose(1, 2);  // [B,H,T,qk]
  // [B, T, kv_lora_rank + rope]: the latent and the one rope key all heads share.
  const torch::Tensor compressed = kv_a_proj_with_mqa->forward(tokens);
  const torch::Tensor latent = compressed.narrow(-1, 0, mla_.kv_lora_rank);
  torch::Tensor k_rope_in = compressed.narrow(-1, mla_.kv_lora_rank, rope_dim)
                                .reshape({b, 1, t, rope_dim});  // [B, 1, T, rope]
  // Under tp only this rank's heads read the shared rope key: its gradient
  // is a partial sum.
  if (tp_.active()) k_rope_in = parallel::tensor::CopyToTpRegion(k_rope_in, *tp_.group);
  // [B, H, T, nope + v]: per head the nope key, then the value.
  const torch::Tensor kv = kv_b_proj->forward(kv_a_layernorm->forward(latent))
                               .view({b, t, h, nope + mla_.v_head_dim})
                               .transpose(1, 2);
  const auto rotate = [&](const torch::Tensor& part) {
    return mla_.rope_interleave ? ApplyInterleavedRope(part, rope) : ApplyRope(part, rope);
  };
  // NOTE: V3's interleave path (de-interleave, then rotate_half) returns the
  // rotated pairs in another order than V2's complex product; the same
  // permutation hits q and k, so q.k and the output are equal.
  const torch::Tensor q_rope = rotate(q.narrow(-1, nope, rope_dim));           // [B, H, T, rope]
  const torch::Tensor k_rope = rotate(k_rope_in).expand({b, h, t, rope_dim});  // [B, H, T, rope]
  return Projected{torch::cat({q.narrow(-1, 0, nope), q_rope}, -1),
                   torch::cat({kv.narrow(-1, 0, nope), k_rope}, -1),
                   kv.narrow(-1, nope, mla_.v_head_dim)};
}

torch::Tensor MlaAttentionImpl::Output(const torch::Tensor& attended) {
  // [B, H, T, v] -> [B, T, H*v] -> [B, T, hidden]
  const int64_t b = attended.size(0), t = attended.size(2);
  return o_proj->forward(attended.transpose(1, 2).reshape({b, t, num_heads_ * mla_.v_head_dim}));
}

void MlaAttentionImpl::SetRecompute(bool recompute) {
  if (q_a_layernorm) q_a_layernorm->SetRecompute(recompute);
  kv_a_layernorm->SetRecompute(recompute);
}

torch::Tensor MlaAttentionImpl::forward(const torch::Tensor& x, const RopeCosSin& rope,
                                        const torch::Tensor& mask) {
  const Projected p = Project(x, rope);
  return Output(LatentAttention(p.q, p.k, p.v, mask, scale_));
}

torch::Tensor MlaAttentionImpl::ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                                              const torch::Tensor& mask, generate::KvCache& cache,
                                              int64_t layer_index) {
  const Projected p = Project(x, rope);
  // [B, H, S, qk] and [B, H, S, v] over every cached position.
  const generate::KvView past = cache.Write(layer_index, p.k, p.v);
  return Output(LatentAttention(p.q, past.k, past.v, mask, scale_));
}

}  // namespace fulcrum::models
