// Multi-head latent attention: layer 0 of the DeepSeek-V2 fixture (MLA + dense
// MLP) built by hand from the HF weights must reproduce HF's hidden states;
// plus the q_proj variant, HF parameter names, incremental decoding, the two
// rope layouts and the softmax scale.
#include "trainer/models/mla_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/models/attention_mask.h"
#include "trainer/models/mlp.h"
#include "trainer/models/rms_norm.h"
#include "trainer/models/rotary.h"

namespace fulcrum::models {
namespace {

const auto kFloat = torch::TensorOptions().dtype(torch::kFloat);

std::string FixtureDir() { return fulcrum::testing::FixturesDir() + "/deepseek_v2"; }

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

// The fixture's config.json, filled by hand (config parsing is not under test).
ModelConfig FixtureConfig() {
  const nlohmann::json j = ReadJson(FixtureDir() + "/model/config.json");
  ModelConfig c;
  c.model_type = j.at("model_type").get<std::string>();
  c.vocab_size = j.at("vocab_size").get<int64_t>();
  c.hidden_size = j.at("hidden_size").get<int64_t>();
  c.intermediate_size = j.at("intermediate_size").get<int64_t>();
  c.num_layers = j.at("num_hidden_layers").get<int64_t>();
  c.num_heads = j.at("num_attention_heads").get<int64_t>();
  c.num_kv_heads = c.num_heads;
  c.max_position_embeddings = j.at("max_position_embeddings").get<int64_t>();
  c.rms_norm_eps = j.at("rms_norm_eps").get<double>();
  c.rope_theta = j.at("rope_theta").get<double>();
  c.attention_bias = j.at("attention_bias").get<bool>();
  c.mla.q_lora_rank = j.at("q_lora_rank").get<int64_t>();
  c.mla.kv_lora_rank = j.at("kv_lora_rank").get<int64_t>();
  c.mla.qk_nope_head_dim = j.at("qk_nope_head_dim").get<int64_t>();
  c.mla.qk_rope_head_dim = j.at("qk_rope_head_dim").get<int64_t>();
  c.mla.v_head_dim = j.at("v_head_dim").get<int64_t>();
  c.head_dim = c.mla.qk_rope_head_dim;  // as the parsed config sets it for MLA
  return c;
}

// A small MLA config for tests on random weights.
ModelConfig TinyConfig(int64_t q_lora_rank) {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.hidden_size = 32;
  c.num_heads = 2;
  c.num_kv_heads = 2;
  c.mla.q_lora_rank = q_lora_rank;
  c.mla.kv_lora_rank = 12;
  c.mla.qk_nope_head_dim = 6;
  c.mla.qk_rope_head_dim = 4;
  c.mla.v_head_dim = 5;  // != qk_head_dim (10)
  c.head_dim = 4;
  return c;
}

// Copies "<prefix><name>" of `weights` into every parameter of `module`.
void LoadFrom(torch::nn::Module& module, const checkpoint::HfWeights& weights,
              const std::string& prefix) {
  torch::NoGradGuard no_grad;
  for (auto& param : module.named_parameters()) {
    const auto tensor = weights.View(prefix + param.key());
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    ASSERT_EQ(tensor->sizes(), param.value().sizes()) << prefix + param.key();
    param.value().copy_(*tensor);
  }
}

// 2-D ~ N(0, 1/in), 1-D ~ U(0.5, 1.5), from a fixed seed.
void RandomInit(torch::nn::Module& module, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 2) {
      p.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(p.size(1))));
    } else {
      p.uniform_(0.5, 1.5);
    }
  }
}

RopeCosSin Rope(const ModelConfig& c, int64_t first, int64_t count, int64_t batch = 1) {
  const torch::Tensor inv_freq = RopeInvFreq(c.head_dim, c.rope_theta, c.rope_scaling);
  const torch::Tensor positions =
      torch::arange(first, first + count, torch::kLong).view({1, count}).expand({batch, count});
  return ComputeRopeCosSin(inv_freq, positions, torch::kFloat);
}

// [1, 1, T, past + T]: query i (absolute past + i) sees keys j <= past + i.
torch::Tensor CausalMaskAt(int64_t past, int64_t t) {
  const torch::Tensor keys = torch::arange(past + t, torch::kLong).view({1, past + t});
  const torch::Tensor queries = torch::arange(past, past + t, torch::kLong).view({t, 1});
  return torch::zeros({t, past + t})
      .masked_fill(keys.gt(queries), std::numeric_limits<float>::lowest())
      .view({1, 1, t, past + t});
}

TEST(MlaAttentionTest, FixtureLayerZeroMatchesHf) {
  const ModelConfig config = FixtureConfig();
  auto weights = checkpoint::HfWeights::Open(FixtureDir() + "/model");
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto expected = checkpoint::HfWeights::Open(FixtureDir(), "expected");
  ASSERT_TRUE(expected.ok()) << expected.status();
  const torch::Tensor ids = expected->View("input_ids")->clone();             // [2, 16]
  const torch::Tensor key_valid = expected->View("attention_mask")->clone();  // [2, 16]
  const int64_t b = ids.size(0), t = ids.size(1);

  MlaAttention attn(config, kFloat);
  Mlp mlp(config, kFloat);
  RMSNorm input_norm(config.hidden_size, config.rms_norm_eps, kFloat);
  RMSNorm post_norm(config.hidden_size, config.rms_norm_eps, kFloat);
  LoadFrom(*attn, *weights, "model.layers.0.self_attn.");
  LoadFrom(*mlp, *weights, "model.layers.0.mlp.");
  LoadFrom(*input_norm, *weights, "model.layers.0.input_layernorm.");
  LoadFrom(*post_norm, *weights, "model.layers.0.post_attention_layernorm.");
  const torch::Tensor embed = weights->View("model.embed_tokens.weight")->clone();  // [512, 64]

  torch::NoGradGuard no_grad;
  const torch::Tensor h0 = embed.index_select(0, ids.flatten()).view({b, t, config.hidden_size});
  ASSERT_TRUE(torch::allclose(h0, *expected->View("debug.hidden_states.0")));
  const torch::Tensor mask =
      BuildAttentionMask(b, t, key_valid, torch::Tensor(), torch::kFloat, torch::kCPU);
  torch::Tensor h = h0 + attn->forward(input_norm->forward(h0), Rope(config, 0, t, b), mask);
  h = h + mlp->forward(post_norm->forward(h));

  // debug.hidden_states.1 is the output of layer 0 (.0 is the embeddings).
  const torch::Tensor want = *expected->View("debug.hidden_states.1");  // [2, 16, 64]
  const torch::Tensor valid = key_valid.to(torch::kBool);
  const torch::Tensor err = (h - want).abs().index({valid});
  const torch::Tensor bound = 1e-4 + 1e-4 * want.abs().index({valid});
  EXPECT_TRUE(err.le(bound).all().item<bool>()) << "max err " << err.max().item<double>();
  EXPECT_EQ(err.size(0), 27);  // 16 + 11 real tokens
  // A wrong rope layout must be visible at this tolerance.
  ModelConfig halves = config;
  halves.mla.rope_interleave = false;
  MlaAttention wrong(halves, kFloat);
  LoadFrom(*wrong, *weights, "model.layers.0.self_attn.");
  const torch::Tensor a = attn->forward(input_norm->forward(h0), Rope(config, 0, t, b), mask);
  const torch::Tensor w = wrong->forward(input_norm->forward(h0), Rope(config, 0, t, b), mask);
  EXPECT_GT((a - w).abs().max().item<double>(), 1e-3);
}

TEST(MlaAttentionTest, ParameterNamesAreHfNames) {
  const ModelConfig config = FixtureConfig();
  MlaAttention attn(config, kFloat);
  std::vector<std::string> want;
  const std::string prefix = "model.layers.0.self_attn.";
  const nlohmann::json meta = ReadJson(FixtureDir() + "/meta.json");
  for (const auto& name : meta.at("parameter_names")) {
    const std::string s = name.get<std::string>();
    if (s.rfind(prefix, 0) == 0) want.push_back(s.substr(prefix.size()));
  }
  std::vector<std::string> got;
  for (const auto& p : attn->named_parameters()) got.push_back(p.key());
  ASSERT_EQ(want.size(), 7u);
  EXPECT_EQ(got, want);  // same names, in HF's order
  EXPECT_EQ(attn->named_parameters()["kv_b_proj.weight"].sizes(),
            torch::IntArrayRef({4 * (16 + 16), 32}));
}

TEST(MlaAttentionTest, WithoutQLoraBuildsQProjAndBiasFollowsHf) {
  ModelConfig config = TinyConfig(/*q_lora_rank=*/0);
  config.attention_bias = true;
  MlaAttention attn(config, kFloat);
  std::set<std::string> names;
  for (const auto& p : attn->named_parameters()) names.insert(p.key());
  // HF: q_proj, q_b_proj and kv_b_proj never have a bias; kv_a and o follow
  // attention_bias.
  const std::set<std::string> want = {"q_proj.weight",
                                      "kv_a_proj_with_mqa.weight",
                                      "kv_a_proj_with_mqa.bias",
                                      "kv_a_layernorm.weight",
                                      "kv_b_proj.weight",
                                      "o_proj.weight",
                                      "o_proj.bias"};
  EXPECT_EQ(names, want);
  EXPECT_FALSE(attn->q_a_proj);
  EXPECT_EQ(attn->q_proj->named_parameters()["weight"].sizes(), torch::IntArrayRef({2 * 10, 32}));
  RandomInit(*attn, 7);
  const torch::Tensor x = torch::randn({2, 5, 32});
  const torch::Tensor out = attn->forward(x, Rope(config, 0, 5, 2), CausalMaskAt(0, 5));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({2, 5, 32}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  // Causal: the first position does not see later tokens.
  torch::Tensor x2 = x.clone();
  x2.narrow(1, 3, 2).add_(1.0);
  const torch::Tensor out2 = attn->forward(x2, Rope(config, 0, 5, 2), CausalMaskAt(0, 5));
  EXPECT_TRUE(torch::allclose(out.narrow(1, 0, 3), out2.narrow(1, 0, 3)));
  EXPECT_FALSE(torch::allclose(out.narrow(1, 3, 2), out2.narrow(1, 3, 2)));
}

TEST(MlaAttentionTest, CachedDecodingEqualsFullForward) {
  const ModelConfig config = TinyConfig(/*q_lora_rank=*/8);
  MlaAttention attn(config, kFloat);
  RandomInit(*attn, 11);
  torch::NoGradGuard no_grad;
  const int64_t prompt = 5, total = 8;
  const torch::Tensor x = torch::randn({1, total, 32});
  const torch::Tensor full = attn->forward(x, Rope(config, 0, total), CausalMaskAt(0, total));

  generate::KvCacheShape shape;
  shape.num_layers = 2;
  shape.num_kv_heads = config.num_heads;
  shape.head_dim = config.mla.qk_head_dim();
  shape.value_head_dim = config.mla.v_head_dim;
  shape.capacity = total;
  generate::KvCache cache(shape, kFloat);
  std::vector<torch::Tensor> pieces;
  pieces.push_back(attn->ForwardCached(x.narrow(1, 0, prompt), Rope(config, 0, prompt),
                                       CausalMaskAt(0, prompt), cache, /*layer_index=*/1));
  cache.Advance(prompt);
  for (int64_t pos = prompt; pos < total; ++pos) {
    pieces.push_back(attn->ForwardCached(x.narrow(1, pos, 1), Rope(config, pos, 1),
                                         CausalMaskAt(pos, 1), cache, 1));
    cache.Advance(1);
  }
  const torch::Tensor cached = torch::cat(pieces, 1);
  EXPECT_TRUE(torch::allclose(cached, full, 1e-5, 1e-6))
      << "max diff " << (cached - full).abs().max().item<double>();
  EXPECT_EQ(cache.length(), total);
}

// Row permutation that turns interleaved rope pairs (x0, x1, x2, x3, ...) into
// halves (x0, x2, ..., x1, x3, ...) for rows [first, first + rope) of each
// block of `block` rows.
torch::Tensor DeinterleaveRows(const torch::Tensor& w, int64_t block, int64_t first, int64_t rope) {
  std::vector<int64_t> index;
  for (int64_t start = 0; start < w.size(0); start += block) {
    for (int64_t r = 0; r < block; ++r) {
      int64_t src = start + r;
      const int64_t i = r - first;
      if (i >= 0 && i < rope) src = start + first + (i < rope / 2 ? 2 * i : 2 * (i - rope / 2) + 1);
      index.push_back(src);
    }
  }
  return w.index_select(0, torch::tensor(index, torch::kLong));
}

// HF DeepSeek-V3's rope_interleave path de-interleaves q/k then applies
// rotate_half: equal to the halves layout on weights whose rope rows are
// de-interleaved, and (same permutation on q and k) to V2's complex product.
TEST(MlaAttentionTest, InterleavedRopeEqualsHalvesOnDeinterleavedWeights) {
  const ModelConfig config = TinyConfig(/*q_lora_rank=*/0);
  ModelConfig halves_config = config;
  halves_config.mla.rope_interleave = false;
  MlaAttention interleaved(config, kFloat), halves(halves_config, kFloat);
  RandomInit(*interleaved, 3);
  {
    torch::NoGradGuard no_grad;
    auto src = interleaved->named_parameters();
    for (auto& p : halves->named_parameters()) p.value().copy_(src[p.key()]);
    const int64_t nope = 6, rope = 4, kv_rank = 12;
    halves->q_proj->named_parameters()["weight"].copy_(DeinterleaveRows(
        interleaved->q_proj->named_parameters()["weight"], nope + rope, nope, rope));
    const torch::Tensor kv_a = interleaved->kv_a_proj_with_mqa->named_parameters()["weight"];
    halves->kv_a_proj_with_mqa->named_parameters()["weight"].copy_(
        DeinterleaveRows(kv_a, kv_a.size(0), kv_rank, rope));
  }
  const torch::Tensor x = torch::randn({1, 6, 32});
  const RopeCosSin rope = Rope(config, 3, 6);
  const torch::Tensor a = interleaved->forward(x, rope, CausalMaskAt(0, 6));
  const torch::Tensor b = halves->forward(x, rope, CausalMaskAt(0, 6));
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6)) << (a - b).abs().max().item<double>();
}

TEST(MlaAttentionTest, InterleavedRopeRotatesAdjacentPairs) {
  RopeCosSin rope;
  // angles 0.3 (pair 0) and 0.7 (pair 1), rotate_half layout [a0, a1, a0, a1]
  const torch::Tensor angles = torch::tensor({0.3f, 0.7f, 0.3f, 0.7f}).view({1, 1, 1, 4});
  rope.cos = angles.cos();
  rope.sin = angles.sin();
  const torch::Tensor x = torch::tensor({1.0f, 0.0f, 0.0f, 2.0f}).view({1, 1, 1, 4});
  const torch::Tensor got = ApplyInterleavedRope(x, rope).flatten();
  EXPECT_NEAR(got[0].item<float>(), std::cos(0.3), 1e-6);
  EXPECT_NEAR(got[1].item<float>(), std::sin(0.3), 1e-6);
  EXPECT_NEAR(got[2].item<float>(), -2 * std::sin(0.7), 1e-6);
  EXPECT_NEAR(got[3].item<float>(), 2 * std::cos(0.7), 1e-6);
}

TEST(MlaAttentionTest, SoftmaxScale) {
  ModelConfig config = TinyConfig(0);
  config.mla.qk_nope_head_dim = 128;
  config.mla.qk_rope_head_dim = 64;
  const double plain = 1.0 / std::sqrt(192.0);
  EXPECT_DOUBLE_EQ(MlaSoftmaxScale(config), plain);
  config.rope_scaling.type = "yarn";
  config.rope_scaling.factor = 40.0;
  config.rope_scaling.mscale = 1.0;
  config.rope_scaling.mscale_all_dim = 1.0;
  const double mscale = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(MlaSoftmaxScale(config), plain * mscale * mscale, 1e-15);
  config.rope_scaling.mscale_all_dim = 0.0;  // absent: no correction
  EXPECT_DOUBLE_EQ(MlaSoftmaxScale(config), plain);
  // DeepSeek-V2's checkpoints (mscale_all_dim 0.707) get it too (HF 4.57's
  // V2 omitted it; fixed upstream in transformers PR #47435).
  config.rope_scaling.mscale_all_dim = 0.707;
  config.model_type = "deepseek_v2";
  const double v2 = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(MlaSoftmaxScale(config), plain * v2 * v2, 1e-15);
}

TEST(MlaAttentionDeathTest, RequiresLatentRank) {
  ModelConfig config = TinyConfig(0);
  config.mla.kv_lora_rank = 0;
  EXPECT_DEATH(MlaAttention(config, kFloat), "kv_lora_rank");
}

}  // namespace
}  // namespace fulcrum::models
