#include "trainer/metrics/parameter_count.h"

namespace fulcrum::metrics {
namespace {

// Adds the attention block's parameters to `counts`.
void AddAttention(const models::ModelConfig& c, LayerParameterCounts& counts) {
  const int64_t h = c.hidden_size, heads = c.num_heads;
  if (c.mla.enabled()) {
    // Latent projections and their norms are replicated; q (or q_b), kv_b and
    // o split by heads.
    const models::MlaConfig& m = c.mla;
    if (m.q_lora_rank > 0) {
      counts.replicated += h * m.q_lora_rank + m.q_lora_rank;
      counts.tp_split += m.q_lora_rank * heads * m.qk_head_dim();
    } else {
      counts.tp_split += h * heads * m.qk_head_dim();
    }
    counts.replicated += h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank;
    counts.tp_split += m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim);
    counts.tp_split += heads * m.v_head_dim * h;
    return;
  }
  const int64_t q = heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  counts.tp_split += h * q + 2 * h * kv + q * h;
  if (c.attention_bias) counts.tp_split += q + 2 * kv;
  if (c.o_proj_bias) counts.replicated += h;
  if (c.qk_norm) counts.replicated += 2 * c.head_dim;
}

int64_t SwiGluParameters(int64_t hidden, int64_t width, bool bias) {
  return 3 * hidden * width + (bias ? 2 * width + hidden : 0);
}

}  // namespace

LayerParameterCounts CountLayerParameters(const models::ModelConfig& c, int64_t layer) {
  LayerParameterCounts counts;
  const int64_t h = c.hidden_size;
  counts.replicated = 2 * h;  // the two norms
  AddAttention(c, counts);
  if (!models::IsMoeLayer(c, layer)) {
    counts.tp_split += SwiGluParameters(h, c.intermediate_size, c.mlp_bias);
    return counts;
  }
  const models::MoeConfig& moe = c.moe;
  counts.routed_experts =
      moe.num_experts * SwiGluParameters(h, moe.expert_intermediate_size, false);
  counts.replicated += moe.num_experts * h;  // the router
  if (moe.shared_intermediate_size > 0) {
    counts.tp_split += SwiGluParameters(h, moe.shared_intermediate_size, false);
    if (moe.shared_expert_gate) counts.replicated += h;
  }
  return counts;
}

int64_t EmbeddingParameters(const models::ModelConfig& c) { return c.vocab_size * c.hidden_size; }

ParameterCounts CountParameters(const models::ModelConfig& c) {
  ParameterCounts counts;
  // The embedding, lm_head unless tied, the final norm.
  counts.other = EmbeddingParameters(c) * (c.tie_word_embeddings ? 1 : 2) + c.hidden_size;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const LayerParameterCounts l = CountLayerParameters(c, layer);
    counts.other += l.tp_split + l.replicated;
    counts.routed_experts += l.routed_experts;
  }
  return counts;
}

}  // namespace fulcrum::metrics
