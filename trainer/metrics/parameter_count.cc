#include "trainer/metrics/parameter_count.h"

namespace fulcrum::metrics {
namespace {

int64_t AttentionParameters(const models::ModelConfig& c) {
  const int64_t h = c.hidden_size, heads = c.num_heads;
  if (c.mla.enabled()) {
    const models::MlaConfig& m = c.mla;
    const int64_t q = m.q_lora_rank > 0 ? h * m.q_lora_rank + m.q_lora_rank +
                                              m.q_lora_rank * heads * m.qk_head_dim()
                                        : h * heads * m.qk_head_dim();
    const int64_t kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank +
                       m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim);
    return q + kv + heads * m.v_head_dim * h;
  }
  const int64_t q = heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  int64_t n = h * q + 2 * h * kv + q * h;
  if (c.attention_bias) n += q + 2 * kv;
  if (c.o_proj_bias) n += h;
  if (c.qk_norm) n += 2 * c.head_dim;
  return n;
}

int64_t SwiGluParameters(int64_t hidden, int64_t width, bool bias) {
  return 3 * hidden * width + (bias ? 2 * width + hidden : 0);
}

}  // namespace

ParameterCounts CountParameters(const models::ModelConfig& c) {
  ParameterCounts counts;
  const int64_t h = c.hidden_size;
  counts.other = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + h;  // + final norm
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    counts.other += 2 * h + AttentionParameters(c);  // the two norms
    if (!models::IsMoeLayer(c, layer)) {
      counts.other += SwiGluParameters(h, c.intermediate_size, c.mlp_bias);
      continue;
    }
    const models::MoeConfig& moe = c.moe;
    counts.routed_experts +=
        moe.num_experts * SwiGluParameters(h, moe.expert_intermediate_size, false);
    counts.other += moe.num_experts * h;  // the router
    if (moe.shared_intermediate_size > 0) {
      counts.other += SwiGluParameters(h, moe.shared_intermediate_size, false);
      if (moe.shared_expert_gate) counts.other += h;
    }
  }
  return counts;
}

}  // namespace fulcrum::metrics
