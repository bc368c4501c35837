// Unit tests of the blocks and the model on tiny random weights (no
// checkpoint), and activation recomputation (train.recompute): the same loss,
// gradients and MoE statistics as without it, and less memory held between
// forward and backward.
#include "trainer/models/causal_lm.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tests/tensor_compare.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/models/attention.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/mlp.h"
#include "trainer/models/moe_block.h"
#include "trainer/models/recompute.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {
namespace {

// 4 heads over 2 kv heads, ffn 1.5 x hidden, vocab 32.
ModelConfig TinyConfig(const std::string& arch, const std::string& model_type, int64_t hidden = 16,
                       int64_t layers = 2, int64_t max_positions = 64) {
  nlohmann::json json = {{"architectures", {arch}},
                         {"model_type", model_type},
                         {"vocab_size", 32},
                         {"hidden_size", hidden},
                         {"intermediate_size", hidden * 3 / 2},
                         {"num_hidden_layers", layers},
                         {"num_attention_heads", 4},
                         {"num_key_value_heads", 2},
                         {"max_position_embeddings", max_positions},
                         {"rope_theta", 10000.0}};
  if (model_type == "qwen3") json["head_dim"] = 8;
  auto config = ParseModelConfig(json, "tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

CausalLM TinyModel(const ModelConfig& config, uint64_t seed) {
  CausalLM model(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*model, seed);
  return model;
}

ForwardInputs In(const torch::Tensor& ids) {
  ForwardInputs inputs;
  inputs.input_ids = ids;
  return inputs;
}

torch::Tensor Ids(std::vector<int64_t> ids) {
  return torch::tensor(ids, torch::kLong).view({1, -1});
}

TEST(RotaryTest, Llama3ScalingMatchesReferenceFormula) {
  RopeScaling s;
  s.type = "llama3";
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = 64;
  const int64_t head_dim = 16;
  const double theta = 5e5;
  const torch::Tensor got = RopeInvFreq(head_dim, theta, s);
  ASSERT_EQ(got.sizes(), torch::IntArrayRef({head_dim / 2}));
  // Meta's reference loop, in double.
  const double low_wavelen = 64 / 1.0, high_wavelen = 64 / 4.0;
  int bands[3] = {0, 0, 0};
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double freq = 1.0 / std::pow(theta, 2.0 * i / head_dim);
    const double wavelen = 2 * M_PI / freq;
    double expected;
    if (wavelen < high_wavelen) {
      expected = freq;
      ++bands[0];
    } else if (wavelen > low_wavelen) {
      expected = freq / 8.0;
      ++bands[2];
    } else {
      const double smooth = (64 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * freq / 8.0 + smooth * freq;
      ++bands[1];
    }
    EXPECT_NEAR(got[i].item<double>(), expected, 1e-5 * expected) << "i=" << i;
  }
  EXPECT_GT(bands[0], 0);
  EXPECT_GT(bands[1], 0);
  EXPECT_GT(bands[2], 0);
  // No scaling and linear scaling.
  const torch::Tensor plain = RopeInvFreq(head_dim, theta, RopeScaling{});
  EXPECT_NEAR(plain[1].item<double>(), 1.0 / std::pow(theta, 2.0 / 16), 1e-7);
  RopeScaling linear;
  linear.type = "linear";
  linear.factor = 4.0;
  EXPECT_TRUE(torch::allclose(RopeInvFreq(head_dim, theta, linear), plain / 4.0));
}

TEST(AttentionTest, GroupedMatchesRepeatedKv) {
  torch::manual_seed(0);
  const int64_t b = 2, h = 6, hkv = 2, t = 5, d = 4;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, t, d}),
                      v = torch::randn({b, hkv, t, d});
  const torch::Tensor mask =
      torch::zeros({b, 1, t, t}).masked_fill_(torch::ones({t, t}, torch::kBool).triu(1), -1e30);
  const torch::Tensor got = GroupedAttention(q, k, v, mask, 0.5);
  // Reference: HF repeat_kv then per-head attention.
  const torch::Tensor kr = k.repeat_interleave(h / hkv, 1), vr = v.repeat_interleave(h / hkv, 1);
  const torch::Tensor ref =
      torch::matmul(torch::softmax(torch::matmul(q, kr.transpose(-1, -2)) * 0.5 + mask, -1), vr);
  EXPECT_TRUE(torch::allclose(got, ref, 1e-5, 1e-6)) << (got - ref).abs().max();
}

TEST(CausalLMTest, Qwen3ForwardBackwardWithQkNorm) {
  const ModelConfig config = TinyConfig("Qwen3ForCausalLM", "qwen3");
  CausalLM model = TinyModel(config, 3);
  const auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_TRUE(params.contains("model.layers.1.self_attn.k_norm.weight"));
  EXPECT_EQ(params["model.layers.0.self_attn.q_norm.weight"].size(0), 8);
  EXPECT_EQ(params["model.layers.0.self_attn.q_proj.weight"].sizes(), torch::IntArrayRef({32, 16}));
  EXPECT_FALSE(params.contains("model.layers.0.self_attn.q_proj.bias"));
  const torch::Tensor ids = torch::randint(0, 32, {2, 6}, torch::kLong);
  const torch::Tensor logits = model->forward(In(ids));
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 6, 32}));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat);
  const torch::Tensor loss = CausalLmLoss(logits, ids);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  const torch::Tensor qn_grad = params["model.layers.0.self_attn.q_norm.weight"].grad();
  ASSERT_TRUE(qn_grad.defined());
  EXPECT_GT(qn_grad.abs().sum().item<double>(), 0.0);
}

TEST(CausalLMTest, RightPaddingDoesNotChangeValidLogits) {
  const ModelConfig config = TinyConfig("LlamaForCausalLM", "llama");
  CausalLM model = TinyModel(config, 5);
  torch::NoGradGuard no_grad;
  const torch::Tensor row = Ids({3, 7, 1, 9, 30, 2, 11});
  const torch::Tensor alone = model->forward(In(row));
  const torch::Tensor other = torch::randint(1, 32, {1, 10}, torch::kLong);
  const torch::Tensor padded_row = torch::cat({row, torch::zeros({1, 3}, torch::kLong)}, 1);
  ForwardInputs batch;
  batch.input_ids = torch::cat({other, padded_row}, 0);
  batch.attention_mask = torch::ones({2, 10}, torch::kLong);
  batch.attention_mask.index_put_({1, torch::indexing::Slice(7, 10)}, 0);
  const torch::Tensor logits = model->forward(batch);
  const torch::Tensor valid =
      logits.index({torch::indexing::Slice(1, 2), torch::indexing::Slice(0, 7)});
  EXPECT_TRUE(torch::allclose(valid, alone, 1e-5, 1e-5)) << (valid - alone).abs().max();
  // The other row equals itself run alone too.
  EXPECT_TRUE(torch::allclose(logits.narrow(0, 0, 1), model->forward({other}), 1e-5, 1e-5));
  // Brace forms with a mask: an all-ones mask changes nothing.
  EXPECT_TRUE(torch::equal(model->forward({other, torch::ones({1, 10}, torch::kLong)}),
                           model->forward({other})));
}

TEST(CausalLMTest, DocumentMaskIsolatesPackedDocuments) {
  const ModelConfig config = TinyConfig("Qwen2ForCausalLM", "qwen2");
  CausalLM model = TinyModel(config, 6);
  torch::NoGradGuard no_grad;
  const torch::Tensor a = Ids({4, 8, 15, 16, 23}), b = Ids({9, 2, 31, 5});
  ForwardInputs packed;
  packed.input_ids = torch::cat({a, b}, 1);
  packed.document_ids = torch::tensor({0, 0, 0, 0, 0, 1, 1, 1, 1}, torch::kLong).view({1, 9});
  packed.position_ids = torch::tensor({0, 1, 2, 3, 4, 0, 1, 2, 3}, torch::kLong).view({1, 9});
  const torch::Tensor logits = model->forward(packed);
  const torch::Tensor la = model->forward(In(a)), lb = model->forward(In(b));
  EXPECT_TRUE(torch::allclose(logits.narrow(1, 0, 5), la, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(logits.narrow(1, 5, 4), lb, 1e-5, 1e-5));
  // Without the document mask the second document sees the first.
  ForwardInputs unmasked = packed;
  unmasked.document_ids = torch::Tensor();
  EXPECT_FALSE(torch::allclose(model->forward(unmasked).narrow(1, 5, 4), lb, 1e-5, 1e-5));
}

TEST(CausalLMTest, TiedModelHasNoLmHeadAndUsesEmbedding) {
  ModelConfig config = TinyConfig("LlamaForCausalLM", "llama");
  config.tie_word_embeddings = true;
  CausalLM model = TinyModel(config, 1);
  const auto params = model->named_parameters();
  EXPECT_FALSE(params.contains("lm_head.weight"));
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = Ids({1, 2, 3});
  const torch::Tensor hidden = model->model->forward(In(ids));
  const torch::Tensor expected = torch::matmul(hidden, params["model.embed_tokens.weight"].t());
  EXPECT_TRUE(torch::allclose(model->forward(In(ids)), expected, 1e-5, 1e-6));
}

TEST(CausalLMTest, Bf16ForwardGivesFloatLogits) {
  const ModelConfig config = TinyConfig("MistralForCausalLM", "mistral");
  CausalLM model(config, torch::TensorOptions().dtype(torch::kBFloat16));
  InitializeWeights(*model, 2);
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = model->forward(In(Ids({1, 2, 3, 4})));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(InitTest, DeterministicPerSeed) {
  const ModelConfig config = TinyConfig("Qwen2ForCausalLM", "qwen2");
  CausalLM a = TinyModel(config, 42), b = TinyModel(config, 42), c = TinyModel(config, 43);
  const auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  for (const auto& item : pa) {
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
  EXPECT_FALSE(torch::equal(pa["model.embed_tokens.weight"], pc["model.embed_tokens.weight"]));
  EXPECT_TRUE(torch::equal(pa["model.norm.weight"], torch::ones({16})));
  EXPECT_TRUE(torch::equal(pa["model.layers.0.self_attn.q_proj.bias"], torch::zeros({16})));
  const double std = pa["model.layers.0.mlp.up_proj.weight"].std().item<double>();
  EXPECT_NEAR(std, 0.02, 0.005);
}

// The MLP keeps gate and up only and computes silu(gate) again in backward
// (models/mlp.cc): output and every gradient those of autograd over
// down(silu(gate(x)) * up(x)), to rounding (fp32 CPU rows take one fused
// kernel whose sigmoid rounds otherwise than torch's: swiglu_cpu_kernel.h).
TEST(MlpTest, SwiGluMatchesAutogradOfTheOps) {
  torch::manual_seed(5);
  Mlp mlp(16, 24, /*bias=*/false, torch::TensorOptions(), ModelParallel{});
  for (auto& p : mlp->parameters()) p.data().normal_(0, 0.3);
  const torch::Tensor x = torch::randn({2, 5, 16}).requires_grad_(true);
  const torch::Tensor y = mlp->forward(x);
  const torch::Tensor dy = torch::randn_like(y);
  y.backward(dy);
  std::vector<torch::Tensor> grads = {x.grad().clone()};
  for (auto& p : mlp->parameters()) grads.push_back(p.grad().clone());

  const torch::Tensor x2 = x.detach().clone().requires_grad_(true);
  for (auto& p : mlp->parameters()) p.mutable_grad() = torch::Tensor();
  const torch::Tensor y2 =
      mlp->down_proj->forward(torch::silu(mlp->gate_proj->forward(x2)) * mlp->up_proj->forward(x2));
  y2.backward(dy);
  testing::ExpectCloseToLargest(y, y2.to(torch::kDouble), 1e-6, "output");
  testing::ExpectCloseToLargest(grads[0], x2.grad().to(torch::kDouble), 1e-6, "x's gradient");
  size_t i = 1;
  for (auto& p : mlp->parameters()) {
    testing::ExpectCloseToLargest(grads[i], p.grad().to(torch::kDouble), 1e-6,
                                  "parameter " + std::to_string(i));
    ++i;
  }
}

TEST(LossTest, SumMeanAndCount) {
  torch::manual_seed(0);
  const torch::Tensor logits = torch::randn({2, 4, 7});
  torch::Tensor labels = torch::randint(0, 7, {2, 4}, torch::kLong);
  labels.index_put_({1, 3}, -100);
  labels.index_put_({0, 0}, -100);  // position 0 is never a target
  EXPECT_EQ(CountTargets(labels), 5);
  // Reference: explicit loop over shifted targets.
  double sum = 0.0;
  const torch::Tensor logp = torch::log_softmax(logits, -1);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 3; ++t) {
      const int64_t y = labels[b][t + 1].item<int64_t>();
      if (y != -100) sum -= logp[b][t][y].item<double>();
    }
  }
  EXPECT_NEAR(CrossEntropySum(logits, labels).item<double>(), sum, 1e-5);
  EXPECT_NEAR(CausalLmLoss(logits, labels).item<double>(), sum / 5, 1e-6);
  EXPECT_EQ(CrossEntropySum(logits, labels).dim(), 0);
}

// ---- Activation recomputation --------------------------------------------

constexpr Recompute kModes[] = {Recompute::kNone, Recompute::kSelective, Recompute::kFull};

const char* ModeName(Recompute mode) {
  switch (mode) {
    case Recompute::kNone:
      return "none";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

// DeepSeek-V2-shaped: latent attention (q and kv latents with their norms),
// layer 0 dense, layers 1-2 MoE with 8 routed experts (top-2) and a shared one.
ModelConfig TinyDeepseekV2() {
  auto config = ParseModelConfig(nlohmann::json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 64,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "topk_method": "greedy",
    "norm_topk_prob": false, "routed_scaling_factor": 1.0, "q_lora_rank": 16,
    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "hidden_act": "silu"})"),
                                 "tiny_deepseek_v2");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// Qwen3-MoE-shaped: grouped-query attention with q/k norms, every layer MoE.
ModelConfig TinyQwen3Moe() {
  auto config = ParseModelConfig(nlohmann::json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 64,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "head_dim": 8,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
    "norm_topk_prob": true, "hidden_act": "silu"})"),
                                 "tiny_qwen3_moe");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// LoRA on every linear with dropout (the recomputation must replay its
// masks) and a non-zero B, so that A's gradients are not zero.
void AddLoraWithDropout(CausalLMImpl& model) {
  lora::LoraOptions options;
  options.spec.rank = 4;
  options.spec.alpha = 8.0;
  options.spec.dropout = 0.25;
  options.targets = {"all-linear"};
  options.seed = 3;
  ASSERT_TRUE(lora::ApplyLora(model, options).ok());
  torch::NoGradGuard no_grad;
  for (const lora::LoraLayer& l : lora::LoraLayers(model)) {
    if (l.layer->has_adapter()) l.layer->lora_b().normal_(0.0, 0.05);
  }
}

struct StepResult {
  double loss = 0.0;
  std::map<std::string, torch::Tensor> grads;  // trainable parameters (undefined: none)
  std::vector<MoeBlockImpl::StepStats> moe;    // per MoE block, taken after the step
};

// One training forward and backward under `mode`, the dropout generator
// seeded the same for every mode.
StepResult RunStep(CausalLMImpl& model, Recompute mode, const torch::Tensor& ids) {
  model.SetRecompute(mode);
  model.train();
  for (torch::Tensor& p : model.parameters()) p.mutable_grad() = torch::Tensor();
  torch::manual_seed(99);
  const torch::Tensor loss = CausalLmLoss(model.forward(In(ids)), ids);
  loss.backward();
  StepResult r;
  r.loss = loss.item<double>();
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) r.grads[item.key()] = item.value().grad();
  }
  for (MoeBlockImpl* block : MoeBlocks(model)) r.moe.push_back(block->TakeStepStats());
  return r;
}

// Bit-identical loss; gradients within 1e-6 (recomputation may sum a
// tensor's gradient contributions in another order).
void ExpectSameStep(const StepResult& got, const StepResult& want) {
  EXPECT_EQ(got.loss, want.loss);
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (const auto& [name, grad] : want.grads) {
    const torch::Tensor& g = got.grads.at(name);
    ASSERT_EQ(g.defined(), grad.defined()) << name;
    if (!grad.defined()) continue;
    EXPECT_LE((g - grad).abs().max().item<double>(), 1e-6) << name;
  }
  ASSERT_EQ(got.moe.size(), want.moe.size());
  for (size_t i = 0; i < want.moe.size(); ++i) {
    EXPECT_TRUE(torch::equal(got.moe[i].loads, want.moe[i].loads)) << "MoE block " << i;
    EXPECT_TRUE(torch::equal(got.moe[i].balance_loss_sum, want.moe[i].balance_loss_sum))
        << "MoE block " << i;
    EXPECT_TRUE(torch::equal(got.moe[i].dropped, want.moe[i].dropped)) << "MoE block " << i;
  }
}

void ExpectModesAgree(CausalLMImpl& model, const torch::Tensor& ids) {
  const StepResult none = RunStep(model, Recompute::kNone, ids);
  EXPECT_TRUE(std::isfinite(none.loss));
  for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
    SCOPED_TRACE(ModeName(mode));
    ExpectSameStep(RunStep(model, mode, ids), none);
  }
}

TEST(RecomputeTest, ParsesTheRecipeNames) {
  EXPECT_EQ(*ParseRecompute("none"), Recompute::kNone);
  EXPECT_EQ(*ParseRecompute("selective"), Recompute::kSelective);
  EXPECT_EQ(*ParseRecompute("full"), Recompute::kFull);
  const auto bad = ParseRecompute("layers");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("train.recompute"), std::string::npos) << bad.status();
}

TEST(RecomputeTest, DenseLlamaAndQwen3MatchNone) {
  for (const auto& [arch, type] : {std::pair<std::string, std::string>{"LlamaForCausalLM", "llama"},
                                   {"Qwen3ForCausalLM", "qwen3"}}) {
    SCOPED_TRACE(type);
    CausalLM model = TinyModel(TinyConfig(arch, type, 32, 3), 11);
    torch::manual_seed(1);
    ExpectModesAgree(*model, torch::randint(0, 32, {2, 16}, torch::kLong));
  }
}

TEST(RecomputeTest, LoraWithDropoutReplaysTheMasks) {
  // The frozen embedding: no input of the first layer requires grad, its
  // adapters still get their gradients.
  CausalLM model = TinyModel(TinyConfig("LlamaForCausalLM", "llama", 32, 3), 12);
  AddLoraWithDropout(*model);
  torch::manual_seed(2);
  const torch::Tensor ids = torch::randint(0, 32, {2, 16}, torch::kLong);
  ExpectModesAgree(*model, ids);
  // The draws after the step are those of a run without recomputation.
  RunStep(*model, Recompute::kNone, ids);
  const torch::Tensor after_none = torch::rand({4});
  RunStep(*model, Recompute::kFull, ids);
  EXPECT_TRUE(torch::equal(torch::rand({4}), after_none));
}

TEST(RecomputeTest, MoeModelsMatchNoneAndCountOnce) {
  for (const ModelConfig& config : {TinyDeepseekV2(), TinyQwen3Moe()}) {
    SCOPED_TRACE(config.model_type);
    CausalLM model = TinyModel(config, 13);
    std::vector<MoeBlockImpl*> blocks = MoeBlocks(*model);
    ASSERT_FALSE(blocks.empty());
    MoeBalanceOptions balance;
    balance.aux_loss = AuxLoss::kSwitch;
    balance.aux_loss_coeff = 0.1;
    balance.z_loss_coeff = 0.01;
    for (MoeBlockImpl* block : blocks) {
      block->SetBalance(balance);
      block->SetCapacityFactor(1.0);  // drops some choices, counted once
    }
    torch::manual_seed(4);
    const torch::Tensor ids = torch::randint(0, 32, {2, 16}, torch::kLong);
    const StepResult none = RunStep(*model, Recompute::kNone, ids);
    double loads = 0.0;
    for (const MoeBlockImpl::StepStats& s : none.moe) {
      loads += s.loads.sum().item<double>();
      EXPECT_GT(s.balance_loss_sum.item<double>(), 0.0);
    }
    // Every token's top-2 choices, once per block.
    EXPECT_EQ(loads, static_cast<double>(blocks.size() * 2 * 16 * 2));
    for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
      SCOPED_TRACE(ModeName(mode));
      ExpectSameStep(RunStep(*model, mode, ids), none);
    }
  }
}

TEST(RecomputeTest, EvaluationUnderNoGradIsUnchanged) {
  CausalLM model = TinyModel(TinyConfig("LlamaForCausalLM", "llama", 32, 3), 14);
  const torch::Tensor ids = torch::randint(0, 32, {1, 8}, torch::kLong);
  torch::NoGradGuard no_grad;
  const torch::Tensor none = model->forward(In(ids));
  for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
    model->SetRecompute(mode);
    const torch::Tensor logits = model->forward(In(ids));
    EXPECT_FALSE(logits.requires_grad());
    EXPECT_TRUE(torch::equal(logits, none)) << ModeName(mode);
  }
}

int64_t HeapInUse() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

// What a training forward leaves allocated until backward (the saved
// activations, the logits and the loss), measured as the growth of the
// process heap.
int64_t HeldAfterForward(CausalLMImpl& model, Recompute mode, const torch::Tensor& ids) {
  model.SetRecompute(mode);
  const int64_t before = HeapInUse();
  torch::Tensor loss = CausalLmLoss(model.forward(In(ids)), ids);
  const int64_t held = HeapInUse() - before;
  loss.backward();
  return held;
}

TEST(RecomputeTest, HoldsLessActivationMemory) {
  // hidden 64, 4 layers, T = 128 (the attention keeps no [2, 4, 128, 128]
  // probabilities in any mode: attention_core_test).
  const ModelConfig config = TinyConfig("LlamaForCausalLM", "llama", 64, 4, 128);
  CausalLM model = TinyModel(config, 15);
  torch::manual_seed(5);
  const torch::Tensor ids = torch::randint(0, 32, {2, 128}, torch::kLong);
  // Warm-up in every mode: a shape's first product builds the oneDNN
  // primitive that later ones reuse (models/matrix_product.h), on the heap.
  for (Recompute mode : kModes) HeldAfterForward(*model, mode, ids);
  std::map<Recompute, int64_t> held;
  for (Recompute mode : kModes) held[mode] = HeldAfterForward(*model, mode, ids);
  std::printf(
      "held between forward and backward: none %.0f KiB, selective %.0f KiB, full %.0f KiB\n",
      held[Recompute::kNone] / 1024.0, held[Recompute::kSelective] / 1024.0,
      held[Recompute::kFull] / 1024.0);
  // The RMSNorms keep only their input in every mode (rms_norm_test), so
  // selective holds no more than none; full keeps one [2, 128, 64] input per
  // layer besides the logits. The heap also moves by a few bookkeeping
  // blocks between runs (112 bytes once), far below one [2, 128, 64] tensor.
  constexpr int64_t kHeapNoise = 4096;
  EXPECT_LE(held[Recompute::kSelective], held[Recompute::kNone] + kHeapNoise);
  EXPECT_LT(held[Recompute::kFull], held[Recompute::kSelective] / 2);
}

}  // namespace
}  // namespace fulcrum::models
