#include "trainer/models/family_registry.h"

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

std::vector<WeightPlanEntry> WeightPlan(const ModelConfig& config) {
  std::vector<WeightPlanEntry> plan;
  plan.push_back({"model.embed_tokens.weight", TpSplit::kVocab});
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      plan.push_back({absl::StrCat(p, "self_attn.", proj, ".weight"), ProjectionSplit(proj)});
      if (config.attention_bias) {
        plan.push_back({absl::StrCat(p, "self_attn.", proj, ".bias"), ProjectionSplit(proj)});
      }
    }
    plan.push_back({p + "self_attn.o_proj.weight", ProjectionSplit("o_proj")});
    // A row-parallel bias is added once, after the reduction.
    if (config.o_proj_bias) plan.push_back({p + "self_attn.o_proj.bias", TpSplit::kReplicated});
    if (config.qk_norm) {
      plan.push_back({p + "self_attn.q_norm.weight", TpSplit::kReplicated});
      plan.push_back({p + "self_attn.k_norm.weight", TpSplit::kReplicated});
    }
    for (const char* proj : {"gate_proj", "up_proj"}) {
      plan.push_back({absl::StrCat(p, "mlp.", proj, ".weight"), ProjectionSplit(proj)});
      if (config.mlp_bias)
        plan.push_back({absl::StrCat(p, "mlp.", proj, ".bias"), ProjectionSplit(proj)});
    }
    plan.push_back({p + "mlp.down_proj.weight", ProjectionSplit("down_proj")});
    if (config.mlp_bias) plan.push_back({p + "mlp.down_proj.bias", TpSplit::kReplicated});
    plan.push_back({p + "input_layernorm.weight", TpSplit::kReplicated});
    plan.push_back({p + "post_attention_layernorm.weight", TpSplit::kReplicated});
  }
  plan.push_back({"model.norm.weight", TpSplit::kReplicated});
  if (!config.tie_word_embeddings) plan.push_back({"lm_head.weight", ProjectionSplit("lm_head")});
  return plan;
}

}  // namespace fulcrum::models
