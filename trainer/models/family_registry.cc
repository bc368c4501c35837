#include "trainer/models/family_registry.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {

const char* TpSplitName(TpSplit split) {
  switch (split) {
    case TpSplit::kColumn:
      return "column";
    case TpSplit::kRow:
      return "row";
    case TpSplit::kVocab:
      return "vocab";
    case TpSplit::kReplicated:
      return "replicated";
  }
  return "?";
}

TpSplit ProjectionSplit(const std::string& module_name) {
  for (const char* column : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head"}) {
    if (module_name == column) return TpSplit::kColumn;
  }
  if (module_name == "o_proj" || module_name == "down_proj") return TpSplit::kRow;
  return TpSplit::kReplicated;
}

namespace {

std::vector<FamilySpec> MakeFamilies() {
  std::vector<FamilySpec> families;
  {
    FamilySpec llama;
    llama.model_type = "llama";
    llama.architectures = {"LlamaForCausalLM"};
    // HF Llama: attention_bias covers q/k/v AND o_proj; mlp_bias all three.
    llama.qkv_bias = Presence::kFromConfig;
    llama.o_bias = Presence::kFromConfig;
    llama.mlp_bias = Presence::kFromConfig;
    llama.attention_bias_key = "attention_bias";
    llama.mlp_bias_key = "mlp_bias";
    families.push_back(llama);
  }
  {
    FamilySpec mistral;
    mistral.model_type = "mistral";
    mistral.architectures = {"MistralForCausalLM"};
    mistral.sliding_window_key = true;
    families.push_back(mistral);
  }
  {
    FamilySpec qwen2;
    qwen2.model_type = "qwen2";
    qwen2.architectures = {"Qwen2ForCausalLM"};
    qwen2.qkv_bias = Presence::kAlways;  // o_proj has none
    qwen2.use_sliding_window_key = true;
    families.push_back(qwen2);
  }
  {
    FamilySpec qwen3;
    qwen3.model_type = "qwen3";
    qwen3.architectures = {"Qwen3ForCausalLM"};
    qwen3.qkv_bias = Presence::kFromConfig;
    qwen3.o_bias = Presence::kFromConfig;
    qwen3.attention_bias_key = "attention_bias";
    qwen3.qk_norm = true;
    qwen3.use_sliding_window_key = true;
    families.push_back(qwen3);
  }
  {
    FamilySpec mixtral;
    mixtral.model_type = "mixtral";
    mixtral.architectures = {"MixtralForCausalLM"};
    mixtral.sliding_window_key = true;
    mixtral.moe_style = MoeStyle::kMixtral;
    families.push_back(mixtral);
  }
  {
    FamilySpec qwen2_moe;
    qwen2_moe.model_type = "qwen2_moe";
    qwen2_moe.architectures = {"Qwen2MoeForCausalLM"};
    qwen2_moe.qkv_bias = Presence::kFromConfig;  // "qkv_bias", default true
    qwen2_moe.attention_bias_key = "qkv_bias";
    qwen2_moe.bias_key_default = true;
    qwen2_moe.use_sliding_window_key = true;
    qwen2_moe.moe_style = MoeStyle::kQwenMoe;
    families.push_back(qwen2_moe);
  }
  {
    FamilySpec qwen3_moe;
    qwen3_moe.model_type = "qwen3_moe";
    qwen3_moe.architectures = {"Qwen3MoeForCausalLM"};
    qwen3_moe.qkv_bias = Presence::kFromConfig;
    qwen3_moe.o_bias = Presence::kFromConfig;
    qwen3_moe.attention_bias_key = "attention_bias";
    qwen3_moe.qk_norm = true;
    qwen3_moe.use_sliding_window_key = true;
    qwen3_moe.moe_style = MoeStyle::kQwenMoe;
    families.push_back(qwen3_moe);
  }
  for (const char* version : {"2", "3"}) {
    // attention_bias covers q_a_proj, kv_a_proj_with_mqa and o_proj
    // (ModelConfig::attention_bias / o_proj_bias); mlp_bias every SwiGLU MLP.
    FamilySpec deepseek;
    deepseek.model_type = absl::StrCat("deepseek_v", version);
    deepseek.architectures = {absl::StrCat("DeepseekV", version, "ForCausalLM")};
    deepseek.qkv_bias = Presence::kFromConfig;
    deepseek.o_bias = Presence::kFromConfig;
    deepseek.mlp_bias = Presence::kFromConfig;
    deepseek.attention_bias_key = "attention_bias";
    deepseek.mlp_bias_key = "mlp_bias";
    deepseek.moe_style = MoeStyle::kDeepSeek;
    deepseek.latent_attention = true;
    families.push_back(deepseek);
  }
  return families;
}

}  // namespace

const std::vector<FamilySpec>& Families() {
  static const std::vector<FamilySpec>* const families =
      new std::vector<FamilySpec>(MakeFamilies());  // immutable after first use
  return *families;
}

const FamilySpec* FindFamilyByModelType(const std::string& model_type) {
  for (const FamilySpec& family : Families()) {
    if (family.model_type == model_type) return &family;
  }
  return nullptr;
}

const FamilySpec* FindFamilyByArchitecture(const std::string& architecture) {
  for (const FamilySpec& family : Families()) {
    for (const std::string& arch : family.architectures) {
      if (arch == architecture) return &family;
    }
  }
  return nullptr;
}

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> out;
  for (const FamilySpec& family : Families()) {
    out.insert(out.end(), family.architectures.begin(), family.architectures.end());
  }
  return out;
}

std::vector<std::string> SupportedModelTypes() {
  std::vector<std::string> out;
  for (const FamilySpec& family : Families()) out.push_back(family.model_type);
  return out;
}

namespace {

// Appends a SwiGLU MLP's weights under `prefix` ("model.layers.0.mlp."), in
// named_parameters order; `roles` are the HF roles of `names`, which set the
// tp splits (gate/up column, down row).
using SwiGluOrder = std::array<const char*, 3>;
constexpr SwiGluOrder kSwiGluRoles = {"gate_proj", "up_proj", "down_proj"};
void AppendSwiGlu(const std::string& prefix, const SwiGluOrder& names, bool bias,
                  std::vector<WeightPlanEntry>* plan, const SwiGluOrder& roles = kSwiGluRoles) {
  for (int i = 0; i < 3; ++i) {
    const TpSplit split = ProjectionSplit(roles[i]);
    plan->push_back({absl::StrCat(prefix, names[i], ".weight"), split});
    // A row-parallel (down) bias is added once, after the reduction.
    if (bias) {
      plan->push_back({absl::StrCat(prefix, names[i], ".bias"),
                       split == TpSplit::kRow ? TpSplit::kReplicated : split});
    }
  }
}

void AppendAttention(const ModelConfig& config, const std::string& p,
                     std::vector<WeightPlanEntry>* plan) {
  for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
    plan->push_back({absl::StrCat(p, "self_attn.", proj, ".weight"), ProjectionSplit(proj)});
    if (config.attention_bias) {
      plan->push_back({absl::StrCat(p, "self_attn.", proj, ".bias"), ProjectionSplit(proj)});
    }
  }
  plan->push_back({p + "self_attn.o_proj.weight", ProjectionSplit("o_proj")});
  // A row-parallel bias is added once, after the reduction.
  if (config.o_proj_bias) plan->push_back({p + "self_attn.o_proj.bias", TpSplit::kReplicated});
  if (config.qk_norm) {
    plan->push_back({p + "self_attn.q_norm.weight", TpSplit::kReplicated});
    plan->push_back({p + "self_attn.k_norm.weight", TpSplit::kReplicated});
  }
}

// DeepSeek MLA, in HF's order. Under tp the per-head projections split by
// heads (column), o by rows; the latent projections are replicated.
void AppendLatentAttention(const ModelConfig& config, const std::string& p,
                           std::vector<WeightPlanEntry>* plan) {
  const std::string a = p + "self_attn.";
  const auto add = [&](const std::string& name, TpSplit split = TpSplit::kReplicated) {
    plan->push_back({a + name, split});
  };
  if (config.mla.q_lora_rank == 0) {
    add("q_proj.weight", TpSplit::kColumn);  // bias=False in HF
  } else {
    add("q_a_proj.weight");
    if (config.attention_bias) add("q_a_proj.bias");
    add("q_a_layernorm.weight");
    add("q_b_proj.weight", TpSplit::kColumn);
  }
  add("kv_a_proj_with_mqa.weight");
  if (config.attention_bias) add("kv_a_proj_with_mqa.bias");
  add("kv_a_layernorm.weight");
  add("kv_b_proj.weight", TpSplit::kColumn);
  add("o_proj.weight", TpSplit::kRow);
  if (config.o_proj_bias) add("o_proj.bias");  // added once, after the reduction
}

// A MoE block, in HF's named_parameters order per family (Mixtral/Qwen: gate,
// experts, shared; DeepSeek: experts, gate, shared). The correction bias is a
// persistent buffer, listed right after the gate weight (state_dict order).
void AppendMoe(const ModelConfig& config, const std::string& p,
               std::vector<WeightPlanEntry>* plan) {
  const MoeConfig& moe = config.moe;
  const bool mixtral = moe.style == MoeStyle::kMixtral;
  const std::string block = p + (mixtral ? "block_sparse_moe." : "mlp.");
  const auto gate = [&] {
    plan->push_back({block + "gate.weight", TpSplit::kReplicated});
    if (moe.correction_bias) {
      plan->push_back({block + "gate.e_score_correction_bias", TpSplit::kReplicated});
    }
  };
  const auto experts = [&] {
    const bool bias = moe.style == MoeStyle::kDeepSeek && config.mlp_bias;
    for (int64_t e = 0; e < moe.num_experts; ++e) {
      const std::string prefix = absl::StrCat(block, "experts.", e, ".");
      if (mixtral) {
        AppendSwiGlu(prefix, {"w1", "w2", "w3"}, false, plan,
                     {"gate_proj", "down_proj", "up_proj"});
      } else {
        AppendSwiGlu(prefix, {"gate_proj", "up_proj", "down_proj"}, bias, plan);
      }
    }
  };
  if (moe.style == MoeStyle::kDeepSeek) {
    experts();
    gate();
  } else {
    gate();
    experts();
  }
  if (moe.shared_intermediate_size > 0) {
    const bool deepseek = moe.style == MoeStyle::kDeepSeek;
    AppendSwiGlu(block + (deepseek ? "shared_experts." : "shared_expert."),
                 {"gate_proj", "up_proj", "down_proj"}, deepseek && config.mlp_bias, plan);
  }
  if (moe.shared_expert_gate) {
    plan->push_back({block + "shared_expert_gate.weight", TpSplit::kReplicated});
  }
}

}  // namespace

std::vector<WeightPlanEntry> WeightPlan(const ModelConfig& config) {
  std::vector<WeightPlanEntry> plan;
  plan.push_back({"model.embed_tokens.weight", TpSplit::kVocab});
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    if (config.mla.enabled()) {
      AppendLatentAttention(config, p, &plan);
    } else {
      AppendAttention(config, p, &plan);
    }
    if (IsMoeLayer(config, layer)) {
      AppendMoe(config, p, &plan);
    } else {
      AppendSwiGlu(p + "mlp.", {"gate_proj", "up_proj", "down_proj"}, config.mlp_bias, &plan);
    }
    plan.push_back({p + "input_layernorm.weight", TpSplit::kReplicated});
    plan.push_back({p + "post_attention_layernorm.weight", TpSplit::kReplicated});
  }
  plan.push_back({"model.norm.weight", TpSplit::kReplicated});
  if (!config.tie_word_embeddings) plan.push_back({"lm_head.weight", ProjectionSplit("lm_head")});
  return plan;
}

}  // namespace fulcrum::models
