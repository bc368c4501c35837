// Unit tests of the blocks and the model on tiny random weights (no checkpoint).
#include "trainer/models/causal_lm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "trainer/models/attention.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {
namespace {

ModelConfig TinyConfig(const std::string& arch, const std::string& model_type) {
  nlohmann::json json = {
      {"architectures", {arch}},  {"model_type", model_type}, {"vocab_size", 32},
      {"hidden_size", 16},        {"intermediate_size", 24},  {"num_hidden_layers", 2},
      {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"max_position_embeddings", 64},
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

}  // namespace
}  // namespace fulcrum::models
