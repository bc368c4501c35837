// Mixture-of-experts / latent-attention / MTP / FP8 keys of config.json: the
// two fixtures, hand-written configs of every new family, each validation
// error (naming the file and the key), IsMoeLayer and WeightPlan.
#include <gtest/gtest.h>

#include <set>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/models/family_registry.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {
namespace {

using Json = nlohmann::json;

Json Qwen2Moe() {
  return Json::parse(R"({
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "vocab_size": 256,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
    "num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 48, "norm_topk_prob": true, "decoder_sparse_step": 2,
    "mlp_only_layers": [3], "hidden_act": "silu"})");
}

Json Qwen3Moe() {
  return Json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 256,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "head_dim": 16,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
    "num_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 16,
    "hidden_act": "silu"})");
}

Json DeepseekV3() {
  return Json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 256,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "routed_scaling_factor": 2.5,
    "norm_topk_prob": true, "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "num_nextn_predict_layers": 1,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                            "activation_scheme": "dynamic", "weight_block_size": [128, 64]},
    "hidden_act": "silu"})");
}

// The error of parsing `json`; fails the test when it parses.
std::string ErrorOf(const Json& json) {
  auto config = ParseModelConfig(json, "moe.json");
  EXPECT_FALSE(config.ok()) << json.dump();
  return config.ok() ? "" : std::string(config.status().message());
}

std::set<std::string> PlanNames(const ModelConfig& config) {
  std::set<std::string> names;
  for (const WeightPlanEntry& entry : WeightPlan(config)) {
    EXPECT_TRUE(names.insert(entry.name).second) << "duplicate " << entry.name;
  }
  return names;
}

TEST(MoeConfigTest, MixtralFixture) {
  auto c = LoadModelConfig(testing::FixturesDir() + "/mixtral/model/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.style, MoeStyle::kMixtral);
  EXPECT_EQ(c->moe.num_experts, 8);
  EXPECT_EQ(c->moe.experts_per_token, 2);
  EXPECT_EQ(c->moe.expert_intermediate_size, 32);
  EXPECT_TRUE(c->moe.normalize_weights);
  EXPECT_EQ(c->moe.shared_intermediate_size, 0);
  EXPECT_FALSE(c->moe.correction_bias);
  EXPECT_DOUBLE_EQ(c->moe.router_aux_loss_coef, 0.001);
  EXPECT_FALSE(c->mla.enabled());
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_TRUE(IsMoeLayer(*c, 0));
  EXPECT_TRUE(IsMoeLayer(*c, 1));
  const std::set<std::string> names = PlanNames(*c);
  EXPECT_EQ(names.size(), 1u + 2u * (4 + 1 + 8 * 3 + 2) + 2u);
  EXPECT_EQ(names.count("model.layers.1.block_sparse_moe.experts.7.w2.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.0.block_sparse_moe.gate.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.0.mlp.gate_proj.weight"), 0u);
  const std::vector<WeightPlanEntry> plan = WeightPlan(*c);
  EXPECT_EQ(plan[5].name, "model.layers.0.block_sparse_moe.gate.weight");  // HF order
  EXPECT_EQ(plan[6].name, "model.layers.0.block_sparse_moe.experts.0.w1.weight");
  // Experts split under tp as a dense MLP (w1 gate, w2 down, w3 up).
  EXPECT_EQ(plan[6].split, TpSplit::kColumn);
  EXPECT_EQ(plan[7].name, "model.layers.0.block_sparse_moe.experts.0.w2.weight");
  EXPECT_EQ(plan[7].split, TpSplit::kRow);
  EXPECT_EQ(plan[8].split, TpSplit::kColumn);
  EXPECT_EQ(plan[5].split, TpSplit::kReplicated);  // the router
}

TEST(MoeConfigTest, DeepseekV2Fixture) {
  auto c = LoadModelConfig(testing::FixturesDir() + "/deepseek_v2/model/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const MoeConfig& moe = c->moe;
  EXPECT_EQ(moe.style, MoeStyle::kDeepSeek);
  EXPECT_EQ(moe.num_experts, 8);
  EXPECT_EQ(moe.experts_per_token, 2);
  EXPECT_EQ(moe.expert_intermediate_size, 32);
  EXPECT_EQ(moe.num_shared_experts, 2);
  EXPECT_EQ(moe.shared_intermediate_size, 64);
  EXPECT_FALSE(moe.shared_expert_gate);
  EXPECT_EQ(moe.scoring, "softmax");
  EXPECT_EQ(moe.topk_method, "group_limited_greedy");
  EXPECT_EQ(moe.n_group, 4);
  EXPECT_EQ(moe.topk_group, 2);
  EXPECT_FALSE(moe.normalize_weights);
  EXPECT_DOUBLE_EQ(moe.routed_scaling_factor, 2.0);
  EXPECT_FALSE(moe.correction_bias);
  EXPECT_EQ(moe.first_k_dense_replace, 1);
  EXPECT_DOUBLE_EQ(moe.router_aux_loss_coef, 0.001);
  EXPECT_EQ(c->mla.q_lora_rank, 48);
  EXPECT_EQ(c->mla.kv_lora_rank, 32);
  EXPECT_EQ(c->mla.qk_nope_head_dim, 16);
  EXPECT_EQ(c->mla.qk_rope_head_dim, 8);
  EXPECT_EQ(c->mla.v_head_dim, 16);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->num_mtp_layers, 0);
  EXPECT_EQ(c->fp8_block_rows, 0);
  EXPECT_FALSE(IsMoeLayer(*c, 0));
  EXPECT_TRUE(IsMoeLayer(*c, 1));
  EXPECT_TRUE(IsMoeLayer(*c, 2));
  // The fixture's tensors are exactly the plan.
  const std::set<std::string> names = PlanNames(*c);
  EXPECT_EQ(names.size(), 89u);  // meta.json parameter_names
  for (const char* name : {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.gate.weight",
                           "model.layers.2.mlp.experts.7.up_proj.weight",
                           "model.layers.1.mlp.shared_experts.down_proj.weight",
                           "model.layers.2.self_attn.kv_a_proj_with_mqa.weight",
                           "model.layers.0.self_attn.q_a_layernorm.weight", "lm_head.weight"}) {
    EXPECT_EQ(names.count(name), 1u) << name;
  }
  EXPECT_EQ(names.count("model.layers.1.mlp.gate.e_score_correction_bias"), 0u);
  EXPECT_EQ(names.count("model.layers.0.self_attn.q_proj.weight"), 0u);
}

TEST(MoeConfigTest, Qwen2MoeSharedExpertAndSparseStep) {
  auto c = ParseModelConfig(Qwen2Moe(), "q2.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.style, MoeStyle::kQwenMoe);
  EXPECT_EQ(c->moe.num_experts, 6);
  EXPECT_EQ(c->moe.expert_intermediate_size, 16);
  EXPECT_EQ(c->moe.shared_intermediate_size, 48);
  EXPECT_EQ(c->moe.num_shared_experts, 1);
  EXPECT_TRUE(c->moe.shared_expert_gate);
  EXPECT_TRUE(c->moe.normalize_weights);
  EXPECT_TRUE(c->attention_bias);  // qkv_bias defaults to true
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_FALSE(c->qk_norm);
  // (i + 1) % 2 == 0 and not in mlp_only_layers [3]: only layer 1.
  EXPECT_FALSE(IsMoeLayer(*c, 0));
  EXPECT_TRUE(IsMoeLayer(*c, 1));
  EXPECT_FALSE(IsMoeLayer(*c, 2));
  EXPECT_FALSE(IsMoeLayer(*c, 3));
  const std::set<std::string> names = PlanNames(*c);
  EXPECT_EQ(names.count("model.layers.1.mlp.shared_expert.gate_proj.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.1.mlp.shared_expert_gate.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.1.mlp.experts.5.down_proj.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.1.self_attn.k_proj.bias"), 1u);
  EXPECT_EQ(names.count("model.layers.3.mlp.up_proj.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.3.mlp.gate.weight"), 0u);
  // 4 layers x (q,k,v weight+bias, o, 2 norms) + 3 dense x 3 + MoE (gate, 6x3, shared 3, gate)
  EXPECT_EQ(names.size(), 1u + 4u * 9u + 3u * 3u + (1u + 18u + 3u + 1u) + 2u);
  Json no_bias = Qwen2Moe();
  no_bias["qkv_bias"] = false;
  no_bias["shared_expert_intermediate_size"] = 0;
  auto plain = ParseModelConfig(no_bias, "q2.json");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->attention_bias);
  EXPECT_FALSE(plain->moe.shared_expert_gate);
  EXPECT_EQ(plain->moe.shared_intermediate_size, 0);
}

TEST(MoeConfigTest, Qwen3MoeHasQkNormAndNoSharedExpert) {
  auto c = ParseModelConfig(Qwen3Moe(), "q3.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.num_experts, 8);
  EXPECT_EQ(c->moe.experts_per_token, 3);
  EXPECT_EQ(c->moe.shared_intermediate_size, 0);
  EXPECT_FALSE(c->moe.shared_expert_gate);
  EXPECT_FALSE(c->moe.normalize_weights);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_TRUE(IsMoeLayer(*c, 0));
  EXPECT_TRUE(IsMoeLayer(*c, 1));
  const std::set<std::string> names = PlanNames(*c);
  EXPECT_EQ(names.count("model.layers.0.self_attn.q_norm.weight"), 1u);
  EXPECT_EQ(names.count("model.layers.0.mlp.shared_expert.up_proj.weight"), 0u);
  EXPECT_EQ(names.size(), 1u + 2u * (4 + 2 + 1 + 24 + 2) + 2u);
}

TEST(MoeConfigTest, DeepseekV3NoauxTcYarnMtpFp8) {
  auto c = ParseModelConfig(DeepseekV3(), "v3.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.scoring, "sigmoid");
  EXPECT_EQ(c->moe.topk_method, "noaux_tc");
  EXPECT_TRUE(c->moe.correction_bias);
  EXPECT_TRUE(c->moe.normalize_weights);
  EXPECT_DOUBLE_EQ(c->moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(c->moe.shared_intermediate_size, 16);
  EXPECT_EQ(c->mla.q_lora_rank, 0);  // null: a plain q_proj
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_EQ(c->num_mtp_layers, 1);
  EXPECT_EQ(c->fp8_block_rows, 128);
  EXPECT_EQ(c->fp8_block_cols, 64);
  EXPECT_EQ(c->rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.mscale_all_dim, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor, 0.0);
  EXPECT_TRUE(c->rope_scaling.truncate);
  // max(128, 4 x 64) = 256.
  EXPECT_TRUE(CheckSequenceLength(*c, 256).ok());
  EXPECT_FALSE(CheckSequenceLength(*c, 257).ok());
  const std::vector<WeightPlanEntry> plan = WeightPlan(*c);
  std::vector<std::string> layer1;
  for (const auto& e : plan) {
    if (absl::StartsWith(e.name, "model.layers.1.") && !absl::StrContains(e.name, "mlp.experts.")) {
      layer1.push_back(e.name);
    }
  }
  const std::vector<std::string> expected = {"model.layers.1.self_attn.q_proj.weight",
                                             "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
                                             "model.layers.1.self_attn.kv_a_layernorm.weight",
                                             "model.layers.1.self_attn.kv_b_proj.weight",
                                             "model.layers.1.self_attn.o_proj.weight",
                                             "model.layers.1.mlp.gate.weight",
                                             "model.layers.1.mlp.gate.e_score_correction_bias",
                                             "model.layers.1.mlp.shared_experts.gate_proj.weight",
                                             "model.layers.1.mlp.shared_experts.up_proj.weight",
                                             "model.layers.1.mlp.shared_experts.down_proj.weight",
                                             "model.layers.1.input_layernorm.weight",
                                             "model.layers.1.post_attention_layernorm.weight"};
  EXPECT_EQ(layer1, expected);
  // No MTP layer (model.layers.3) in the plan: it is not part of the model.
  for (const auto& e : plan) EXPECT_FALSE(absl::StartsWith(e.name, "model.layers.3.")) << e.name;
  EXPECT_EQ(PlanNames(*c).size(), 1u + 3u * 7u + 3u + 2u * (8u * 3u + 2u + 3u) + 2u);
}

TEST(MoeConfigTest, ValidationErrorsNameTheKey) {
  const auto expect_error = [](Json json, const std::string& key, const Json& value,
                               const std::string& fragment) {
    json[key] = value;
    const std::string message = ErrorOf(json);
    EXPECT_TRUE(absl::StrContains(message, "moe.json")) << message;
    EXPECT_TRUE(absl::StrContains(message, fragment)) << key << ": " << message;
  };
  expect_error(DeepseekV3(), "num_experts_per_tok", 9, "num_experts_per_tok");
  expect_error(DeepseekV3(), "n_group", 3, "n_group");
  expect_error(DeepseekV3(), "topk_group", 5, "topk_group");
  expect_error(DeepseekV3(), "scoring_func", "softmax", "scoring_func");
  expect_error(DeepseekV3(), "topk_method", "greedy", "topk_method");
  expect_error(DeepseekV3(), "kv_lora_rank", 0, "kv_lora_rank");
  expect_error(DeepseekV3(), "qk_rope_head_dim", 5, "qk_rope_head_dim");
  expect_error(DeepseekV3(), "v_head_dim", -1, "v_head_dim");
  expect_error(DeepseekV3(), "moe_layer_freq", 0, "moe_layer_freq");
  expect_error(DeepseekV3(), "n_routed_experts", "8", "n_routed_experts");
  expect_error(DeepseekV3(), "hidden_act", "gelu", "hidden_act");
  expect_error(DeepseekV3(), "quantization_config", Json{{"quant_method", "gptq"}},
               "quantization_config.quant_method");
  expect_error(DeepseekV3(), "quantization_config",
               Json{{"quant_method", "fp8"}, {"weight_block_size", {128}}}, "weight_block_size");
  expect_error(Qwen2Moe(), "decoder_sparse_step", 0, "decoder_sparse_step");
  expect_error(Qwen2Moe(), "num_experts", 0, "num_experts");
  expect_error(Qwen2Moe(), "mlp_only_layers", "3", "mlp_only_layers");
  expect_error(Qwen3Moe(), "num_experts_per_tok", 0, "num_experts_per_tok");
  Json v2 = DeepseekV3();
  v2["architectures"] = {"DeepseekV2ForCausalLM"};
  v2["model_type"] = "deepseek_v2";
  v2.erase("scoring_func");
  expect_error(v2, "topk_method", "noaux_tc", "topk_method");  // V2: softmax, greedy / group
  v2["topk_method"] = "group_limited_greedy";
  expect_error(v2, "norm_topk_prob", true, "norm_topk_prob");
  expect_error(v2, "scoring_func", "sigmoid", "scoring_func");
  Json k3 = DeepseekV3();
  k3["num_experts_per_tok"] = 5;  // 5 > topk_group 2 x 2 experts per group
  const std::string message = ErrorOf(k3);
  EXPECT_TRUE(absl::StrContains(message, "num_experts_per_tok")) << message;
  EXPECT_TRUE(absl::StrContains(message, "topk_group")) << message;
  Json yarn = DeepseekV3();
  yarn["rope_scaling"]["beta_slow"] = 64;
  EXPECT_TRUE(absl::StrContains(ErrorOf(yarn), "beta_fast"));
}

TEST(MoeConfigTest, DenseFamiliesHaveNoMoe) {
  auto c = LoadModelConfig(testing::FixturesDir() + "/llama/model/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->moe.enabled());
  EXPECT_FALSE(c->mla.enabled());
  EXPECT_FALSE(IsMoeLayer(*c, 0));
  EXPECT_EQ(c->num_mtp_layers, 0);
}

}  // namespace
}  // namespace fulcrum::models
