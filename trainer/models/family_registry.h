// The family registry: one table entry per HF model_type (llama, mistral,
// qwen2, qwen3) saying which architectures it covers, which optional weights
// its layers carry (q/k/v bias, o_proj bias, q/k norm) and how each weight is
// split under tensor parallelism. A new dense family is a table entry (plus a
// block if it brings a new idea).
#pragma once

#include <string>
#include <vector>

namespace fulcrum::models {

struct ModelConfig;

// How a MoE family names its modules and scores its experts.
enum class MoeStyle {
  kNone,      // dense
  kMixtral,   // layers.N.block_sparse_moe.{gate, experts.E.w1/w2/w3}
  kQwenMoe,   // layers.N.mlp.{gate, experts.E.*_proj, shared_expert.*_proj, shared_expert_gate}
  kDeepSeek,  // layers.N.mlp.{gate(.e_score_correction_bias), experts.E.*_proj,
              // shared_experts.*_proj}
};

// Whether an optional weight exists in a family.
enum class Presence {
  kNever,
  kAlways,
  kFromConfig,  // read from a config.json key (FamilySpec says which)
};

// How a weight is split across a tensor-parallel group.
enum class TpSplit {
  kColumn,      // output dim (dim 0 of [out, in]; a bias [out] likewise)
  kRow,         // input dim (dim 1 of [out, in])
  kVocab,       // dim 0 of the embedding [vocab, hidden]
  kReplicated,  // every rank holds the whole tensor (norms, row-parallel biases)
};
const char* TpSplitName(TpSplit split);

struct FamilySpec {
  std::string model_type;                  // config.json "model_type"
  std::vector<std::string> architectures;  // config.json "architectures"[0]
  Presence qkv_bias = Presence::kNever;    // q/k/v_proj.bias
  Presence o_bias = Presence::kNever;      // o_proj.bias
  Presence mlp_bias = Presence::kNever;    // gate/up/down_proj.bias
  std::string attention_bias_key;          // key for kFromConfig (q/k/v and o)
  std::string mlp_bias_key;                // key for kFromConfig (mlp)
  bool qk_norm = false;                    // per-head RMSNorm on q and k (Qwen3)
  bool sliding_window_key = false;         // "sliding_window" may be set (Mistral)
  bool use_sliding_window_key = false;     // "use_sliding_window" gates it (Qwen2/3)
  bool bias_key_default = false;         // value of an absent kFromConfig key (Qwen2-MoE qkv_bias)
  MoeStyle moe_style = MoeStyle::kNone;  // kNone: a dense family
  bool latent_attention = false;         // multi-head latent attention (DeepSeek-V2/V3)
};

// One weight of the model with its HF name and its TP split.
struct WeightPlanEntry {
  std::string name;  // full HF key, e.g. "model.layers.0.self_attn.q_proj.weight"
  TpSplit split = TpSplit::kReplicated;
};

// The TP split of a decoder projection's weight by its module name: q/k/v,
// gate/up -> kColumn; o, down -> kRow. The one place the model (which builds
// its LoraLinears with it) and WeightPlan (which the loader reads) take the
// rule from. Unknown names -> kReplicated.
TpSplit ProjectionSplit(const std::string& module_name);

// The registry's table, in a stable order.
const std::vector<FamilySpec>& Families();
// nullptr when the model_type / architecture is not supported.
const FamilySpec* FindFamilyByModelType(const std::string& model_type);
const FamilySpec* FindFamilyByArchitecture(const std::string& architecture);

// Every architecture of every family ("LlamaForCausalLM", ...).
std::vector<std::string> SupportedArchitectures();
std::vector<std::string> SupportedModelTypes();

// The base weights a model with `config` has, under their HF names, with the
// TP plan, in HfStateDict order (embedding, layers, final norm, lm_head unless
// tied).
std::vector<WeightPlanEntry> WeightPlan(const ModelConfig& config);

}  // namespace fulcrum::models
