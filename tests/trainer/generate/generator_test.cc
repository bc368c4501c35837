// KV-cache generation against recomputing the whole sequence, on the HF
// fixture models (llama: GQA 4q/2kv, untied; llama_tied; qwen2: q/k/v bias),
// with and without their PEFT LoRA adapter.
#include "trainer/generate/generator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>

#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/model_config.h"

namespace fulcrum::generate {
namespace {

struct Case {
  std::string family;
  bool lora = false;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.family + (info.param.lora ? "_lora" : "");
}

models::CausalLM LoadFixture(const Case& c) {
  const std::string dir = fulcrum::testing::FixturesDir() + "/" + c.family;
  auto config = models::LoadModelConfig(dir + "/model/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  models::CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
  auto weights = checkpoint::HfWeights::Open(dir + "/model");
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (weights.ok()) {
    const absl::Status status = models::LoadHfWeights(*model, *weights);
    EXPECT_TRUE(status.ok()) << status;
  }
  if (c.lora) {
    auto options = lora::LoadPeftAdapter(*model, dir + "/lora");
    EXPECT_TRUE(options.ok()) << options.status();
  }
  return model;
}

// An arbitrary prompt of ids < 512 (the fixtures' vocab).
std::vector<int32_t> Prompt() { return {17, 301, 45, 2, 499, 88, 120}; }

class GeneratorFixtureTest : public ::testing::TestWithParam<Case> {};

TEST_P(GeneratorFixtureTest, CachedGreedyEqualsFullRecompute) {
  models::CausalLM model = LoadFixture(GetParam());
  GenerateOptions options;
  options.max_new_tokens = 12;
  const GenerateResult cached = Generate(model, Prompt(), options);
  options.use_cache = false;
  const GenerateResult full = Generate(model, Prompt(), options);
  ASSERT_EQ(cached.tokens.size(), 12u);
  EXPECT_EQ(cached.tokens, full.tokens);
  EXPECT_FALSE(cached.stopped_at_eos);
  ASSERT_EQ(cached.last_logits.sizes(), full.last_logits.sizes());
  EXPECT_LE((cached.last_logits - full.last_logits).abs().max().item<float>(), 1e-5f);
}

TEST_P(GeneratorFixtureTest, PrefillAndStepsGiveFullForwardLogits) {
  models::CausalLM model = LoadFixture(GetParam());
  torch::NoGradGuard no_grad;
  const torch::Tensor ids =
      torch::tensor({5, 77, 301, 12, 9, 400, 33, 250}, torch::kLong).view({1, 8});
  const torch::Tensor full = model->forward({ids});  // [1, 8, V]
  KvCache cache = model->NewKvCache(1, 8);
  // Prefill 5 positions, then 1 and 2 tokens: positions continue across calls.
  const torch::Tensor a = model->ForwardCached(ids.narrow(1, 0, 5), cache);
  EXPECT_EQ(cache.length(), 5);
  const torch::Tensor b = model->ForwardCached(ids.narrow(1, 5, 1), cache);
  const torch::Tensor c = model->ForwardCached(ids.narrow(1, 6, 2), cache, /*last_only=*/true);
  EXPECT_EQ(cache.length(), 8);
  const torch::Tensor got = torch::cat({a, b}, 1);  // [1, 6, V]
  EXPECT_LE((got - full.narrow(1, 0, 6)).abs().max().item<float>(), 1e-5f);
  ASSERT_EQ(c.size(1), 1);
  EXPECT_LE((c - full.narrow(1, 7, 1)).abs().max().item<float>(), 1e-5f);
}

TEST_P(GeneratorFixtureTest, SampledCachedEqualsFullRecomputeWithSameSeed) {
  models::CausalLM model = LoadFixture(GetParam());
  GenerateOptions options;
  options.max_new_tokens = 10;
  options.sampling.temperature = 1.5;
  options.sampling.top_p = 0.9;
  options.sampling.seed = 1234;
  const GenerateResult cached = Generate(model, Prompt(), options);
  options.use_cache = false;
  const GenerateResult full = Generate(model, Prompt(), options);
  EXPECT_EQ(cached.tokens, full.tokens);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GeneratorFixtureTest,
                         ::testing::Values(Case{"llama", false}, Case{"llama", true},
                                           Case{"llama_tied", false}, Case{"qwen2", false},
                                           Case{"qwen2", true}),
                         CaseName);

TEST(GeneratorTest, StopsAtEosAndIncludesIt) {
  models::CausalLM model = LoadFixture({"llama", false});
  GenerateOptions options;
  options.max_new_tokens = 12;
  const GenerateResult free_run = Generate(model, Prompt(), options);
  ASSERT_GE(free_run.tokens.size(), 4u);
  // Declare the 3rd greedy token an eos: generation stops right after it.
  options.eos_ids = {7777, free_run.tokens[2]};
  const GenerateResult stopped = Generate(model, Prompt(), options);
  const size_t first =
      std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[2]) -
      free_run.tokens.begin();
  EXPECT_TRUE(stopped.stopped_at_eos);
  ASSERT_EQ(stopped.tokens.size(), first + 1);
  EXPECT_EQ(stopped.tokens.back(), free_run.tokens[2]);
}

TEST(GeneratorTest, ZeroBudgetGeneratesNothing) {
  models::CausalLM model = LoadFixture({"llama", false});
  GenerateOptions options;
  options.max_new_tokens = 0;
  const GenerateResult result = Generate(model, Prompt(), options);
  EXPECT_TRUE(result.tokens.empty());
  EXPECT_FALSE(result.stopped_at_eos);
}

TEST(KvCacheTest, WriteReturnsAllPositionsAndAdvanceCounts) {
  KvCacheShape shape;
  shape.num_layers = 2;
  shape.num_kv_heads = 2;
  shape.head_dim = 4;
  shape.capacity = 5;
  KvCache cache(shape, torch::TensorOptions().dtype(torch::kFloat));
  const torch::Tensor k = torch::ones({1, 2, 3, 4});
  const KvView first = cache.Write(1, k, 2 * k);
  EXPECT_EQ(first.k.size(2), 3);
  cache.Advance(3);
  const KvView second = cache.Write(1, 3 * torch::ones({1, 2, 1, 4}), torch::zeros({1, 2, 1, 4}));
  ASSERT_EQ(second.k.size(2), 4);
  EXPECT_EQ(second.k[0][0][0][0].item<float>(), 1.0f);
  EXPECT_EQ(second.k[0][1][3][2].item<float>(), 3.0f);
  EXPECT_EQ(second.v[0][0][2][0].item<float>(), 2.0f);
  cache.Advance(1);
  EXPECT_EQ(cache.length(), 4);
  cache.Clear();
  EXPECT_EQ(cache.length(), 0);
}

TEST(KvCacheTest, ValuesMayBeNarrowerThanKeys) {
  // Multi-head latent attention caches keys of qk_head_dim and values of
  // v_head_dim.
  KvCacheShape shape;
  shape.num_layers = 1;
  shape.num_kv_heads = 2;
  shape.head_dim = 6;
  shape.value_head_dim = 4;
  shape.capacity = 3;
  KvCache cache(shape, torch::TensorOptions().dtype(torch::kFloat));
  const KvView view = cache.Write(0, torch::ones({1, 2, 2, 6}), 5 * torch::ones({1, 2, 2, 4}));
  EXPECT_EQ(view.k.sizes(), torch::IntArrayRef({1, 2, 2, 6}));
  EXPECT_EQ(view.v.sizes(), torch::IntArrayRef({1, 2, 2, 4}));
  EXPECT_EQ(view.v[0][1][1][3].item<float>(), 5.0f);
  cache.Advance(2);
  const KvView next = cache.Write(0, torch::zeros({1, 2, 1, 6}), torch::zeros({1, 2, 1, 4}));
  EXPECT_EQ(next.v.size(2), 3);
  EXPECT_EQ(next.v[0][0][0][0].item<float>(), 5.0f);
  // Values of the keys' width no longer fit.
  EXPECT_DEATH(cache.Write(0, torch::ones({1, 2, 1, 6}), torch::ones({1, 2, 1, 6})), "Dv");
}

TEST(KvCacheDeathTest, OverflowIsABug) {
  KvCacheShape shape;
  shape.num_layers = 1;
  shape.num_kv_heads = 1;
  shape.head_dim = 2;
  shape.capacity = 2;
  KvCache cache(shape, torch::TensorOptions().dtype(torch::kFloat));
  EXPECT_DEATH(cache.Write(0, torch::ones({1, 1, 3, 2}), torch::ones({1, 1, 3, 2})), "full");
}

}  // namespace
}  // namespace fulcrum::generate
