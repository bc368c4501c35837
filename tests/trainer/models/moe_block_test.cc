#include "trainer/models/moe_block.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "trainer/lora/apply_lora.h"
#include "trainer/models/expert_capacity.h"

namespace fulcrum::models {
namespace {

constexpr int64_t kHidden = 16;

ModelConfig Config(MoeStyle style) {
  ModelConfig config;
  config.hidden_size = kHidden;
  config.intermediate_size = 24;
  MoeConfig& moe = config.moe;
  moe.style = style;
  moe.experts_per_token = 2;
  moe.expert_intermediate_size = 8;
  switch (style) {
    case MoeStyle::kMixtral:
      moe.num_experts = 8;
      moe.normalize_weights = true;
      break;
    case MoeStyle::kQwenMoe:  // Qwen2-MoE: shared expert with its sigmoid gate
      moe.num_experts = 4;
      moe.num_shared_experts = 1;
      moe.shared_intermediate_size = 12;
      moe.shared_expert_gate = true;
      break;
    case MoeStyle::kDeepSeek:  // DeepSeek-V2
      moe.num_experts = 8;
      moe.num_shared_experts = 2;
      moe.shared_intermediate_size = 16;
      moe.topk_method = "group_limited_greedy";
      moe.n_group = 4;
      moe.topk_group = 2;
      moe.routed_scaling_factor = 2.0;
      break;
    case MoeStyle::kNone:
      break;
  }
  return config;
}

ModelConfig Qwen3Moe() {
  ModelConfig config = Config(MoeStyle::kQwenMoe);
  config.moe.num_shared_experts = 0;
  config.moe.shared_intermediate_size = 0;
  config.moe.shared_expert_gate = false;
  config.moe.normalize_weights = true;
  return config;
}

ModelConfig DeepSeekV3() {
  ModelConfig config = Config(MoeStyle::kDeepSeek);
  MoeConfig& moe = config.moe;
  moe.num_shared_experts = 1;
  moe.shared_intermediate_size = 8;
  moe.scoring = "sigmoid";
  moe.topk_method = "noaux_tc";
  moe.normalize_weights = true;
  moe.routed_scaling_factor = 2.5;
  moe.correction_bias = true;
  return config;
}

void InitRandom(MoeBlock& block, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : block->parameters()) p.copy_(torch::randn_like(p) * 0.4);
  if (block->gate->e_score_correction_bias.defined()) {
    block->gate->e_score_correction_bias.copy_(torch::rand({block->gate->weight.size(0)}) * 0.1);
  }
}

torch::Tensor SwiGlu(MlpImpl& mlp, const torch::Tensor& x) {
  const torch::Tensor g = torch::matmul(mlp.gate_proj->weight, x);
  const torch::Tensor u = torch::matmul(mlp.up_proj->weight, x);
  return torch::matmul(mlp.down_proj->weight, torch::silu(g) * u);
}

// Token by token, choice by choice, straight from the weights.
torch::Tensor NaiveMoe(MoeBlock& block, const MoeConfig& moe, const torch::Tensor& x) {
  const torch::Tensor flat = x.reshape({-1, kHidden});
  const Routing r = RouteTokens(torch::matmul(flat, block->gate->weight.t()), moe,
                                block->gate->e_score_correction_bias);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < flat.size(0); ++t) {
    torch::Tensor out = torch::zeros({kHidden});
    for (int64_t c = 0; c < moe.experts_per_token; ++c) {
      const int64_t e = r.expert_ids[t][c].item<int64_t>();
      out = out + r.weights[t][c] * SwiGlu(block->experts->at(e), flat[t]);
    }
    if (block->shared) {
      torch::Tensor shared = SwiGlu(*block->shared, flat[t]);
      if (block->shared_expert_gate) {
        shared = torch::sigmoid(torch::matmul(block->shared_expert_gate->weight, flat[t])) * shared;
      }
      out = out + shared;
    }
    rows.push_back(out);
  }
  return torch::stack(rows).view(x.sizes());
}

std::map<std::string, torch::Tensor> TakeGrads(MoeBlock& block) {
  std::map<std::string, torch::Tensor> grads;
  for (auto& item : block->named_parameters()) {
    torch::Tensor g = item.value().grad();
    grads[item.key()] = g.defined() ? g.clone() : torch::Tensor();
    item.value().mutable_grad() = torch::Tensor();
  }
  return grads;
}

void ExpectMatchesNaive(const ModelConfig& config, uint64_t seed) {
  MoeBlock block(config, torch::TensorOptions());
  InitRandom(block, seed);
  const torch::Tensor x0 = torch::randn({2, 3, kHidden});
  const torch::Tensor probe = torch::randn({2, 3, kHidden});

  const torch::Tensor x1 = x0.clone().requires_grad_(true);
  const torch::Tensor y1 = block->forward(x1);
  (y1 * probe).sum().backward();
  const auto grads = TakeGrads(block);
  EXPECT_EQ(block->last_routing().expert_ids.sizes(), torch::IntArrayRef({6, 2}));

  const torch::Tensor x2 = x0.clone().requires_grad_(true);
  const torch::Tensor y2 = NaiveMoe(block, config.moe, x2);
  (y2 * probe).sum().backward();
  const auto ref = TakeGrads(block);

  EXPECT_TRUE(torch::allclose(y1, y2, 1e-5, 1e-5)) << (y1 - y2).abs().max();
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-5));
  for (const auto& [name, g] : grads) {
    ASSERT_TRUE(g.defined()) << name << " has no gradient";
    const torch::Tensor expected = ref.at(name).defined() ? ref.at(name) : torch::zeros_like(g);
    EXPECT_TRUE(torch::allclose(g, expected, 1e-5, 1e-5)) << name;
  }
  EXPECT_GT(grads.at("gate.weight").abs().sum().item<double>(), 0.0);
}

TEST(MoeBlockTest, MixtralMatchesNaiveReference) {
  ExpectMatchesNaive(Config(MoeStyle::kMixtral), 1);
}
TEST(MoeBlockTest, Qwen2MoeMatchesNaiveReference) {
  ExpectMatchesNaive(Config(MoeStyle::kQwenMoe), 2);
}
TEST(MoeBlockTest, Qwen3MoeMatchesNaiveReference) { ExpectMatchesNaive(Qwen3Moe(), 3); }
TEST(MoeBlockTest, DeepSeekV2MatchesNaiveReference) {
  ExpectMatchesNaive(Config(MoeStyle::kDeepSeek), 4);
}
TEST(MoeBlockTest, DeepSeekV3MatchesNaiveReference) { ExpectMatchesNaive(DeepSeekV3(), 5); }

TEST(ExpertCapacityTest, CapacityIsTheCeilingOfTheFactorsShare) {
  EXPECT_EQ(ExpertCapacity(16, 2, 8, 1.0), 4);
  EXPECT_EQ(ExpertCapacity(6, 2, 8, 1.0), 2);  // 1.5 -> 2
  EXPECT_EQ(ExpertCapacity(6, 2, 8, 0.5), 1);  // 0.75 -> 1
  EXPECT_EQ(ExpertCapacity(6, 2, 8, 2.0), 3);
}

TEST(ExpertCapacityTest, FirstChoicesComeBeforeSecondChoicesThenTokenOrder) {
  const torch::Tensor ids = torch::tensor({0, 1, 0, 2, 1, 0, 1, 0}, torch::kInt64).view({4, 2});
  // Expert 0: first choices of tokens 0 and 1 fill it; token 2's and 3's
  // second choices drop. Expert 1: token 2's and 3's first choices beat
  // token 0's second choice.
  const torch::Tensor expected =
      torch::tensor({0, -1, 0, 2, 1, -1, 1, -1}, torch::kInt64).view({4, 2});
  EXPECT_TRUE(torch::equal(DropOverCapacity(ids, 3, 2), expected));
  // Room for 3: token 0's second choice joins expert 1 and token 2's joins
  // expert 0; token 3's second choice still drops.
  EXPECT_TRUE(torch::equal(DropOverCapacity(ids, 3, 3),
                           torch::tensor({0, 1, 0, 2, 1, 0, 1, -1}, torch::kInt64).view({4, 2})));
  EXPECT_TRUE(torch::equal(DropOverCapacity(ids, 3, 4), ids));
}

// Slots follow the same priority: expert e's i-th kept choice is slot
// e * capacity + i; a dropped one is E * capacity.
TEST(ExpertCapacityTest, SlotsAreTheKeptChoicesRanksWithinTheirExpert) {
  const torch::Tensor ids = torch::tensor({0, 1, 0, 2, 1, 0, 1, 0}, torch::kInt64).view({4, 2});
  EXPECT_TRUE(torch::equal(CapacitySlots(ids, 3, 2),
                           torch::tensor({0, 6, 1, 4, 2, 6, 3, 6}, torch::kInt64).view({4, 2})));
  // Random routings: the kept choices are DropOverCapacity's, each in a
  // distinct slot of its own expert.
  torch::manual_seed(3);
  for (int64_t capacity : {1, 3, 7}) {
    const torch::Tensor choice =
        torch::argsort(torch::rand({20, 8}), /*dim=*/int64_t{1}).narrow(1, 0, 2).contiguous();
    const torch::Tensor slots = CapacitySlots(choice, 8, capacity);
    const torch::Tensor kept = DropOverCapacity(choice, 8, capacity);
    const torch::Tensor dropped = slots.eq(8 * capacity);
    EXPECT_TRUE(torch::equal(dropped, kept.eq(-1))) << "capacity " << capacity;
    EXPECT_TRUE(torch::equal(slots.div(capacity, "floor").masked_select(~dropped),
                             choice.masked_select(~dropped)));
    const torch::Tensor used = std::get<0>(slots.masked_select(~dropped).sort());
    const int64_t n = used.numel();
    EXPECT_TRUE(used.narrow(0, 1, n - 1).ne(used.narrow(0, 0, n - 1)).all().item<bool>())
        << "a slot taken twice";
  }
}

// With a capacity factor, training forwards drop each expert's choices over
// its capacity (the naive reference ranks them one by one: first choices,
// then second, token order within) and count them; evaluation forwards stay
// dropless and count nothing.
TEST(MoeBlockTest, CapacityDropsChoicesInTrainingForwardsOnly) {
  const ModelConfig config = Config(MoeStyle::kMixtral);
  MoeBlock block(config, torch::TensorOptions());
  InitRandom(block, 11);
  block->SetCapacityFactor(0.5);  // ceil(0.5 * 6 * 2 / 8) = 1 choice per expert
  const torch::Tensor x = torch::randn({2, 3, kHidden});
  torch::NoGradGuard no_grad;
  const torch::Tensor y = block->forward(x);
  const Routing r = block->last_routing();
  const torch::Tensor flat = x.reshape({-1, kHidden});
  torch::Tensor expected = torch::zeros({6, kHidden});
  int64_t dropped = 0;
  for (int64_t e = 0; e < config.moe.num_experts; ++e) {
    // This expert's first choices in token order, then its second choices.
    int64_t taken = 0;
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t t = 0; t < 6; ++t) {
        if (r.expert_ids[t][c].item<int64_t>() != e) continue;
        if (taken++ >= 1) {
          ++dropped;
          continue;
        }
        expected[t] += r.weights[t][c] * SwiGlu(block->experts->at(e), flat[t]);
      }
    }
  }
  ASSERT_GT(dropped, 0);
  EXPECT_TRUE(torch::allclose(y.reshape({6, kHidden}), expected, 1e-5, 1e-5))
      << (y.reshape({6, kHidden}) - expected).abs().max();
  EXPECT_EQ(block->TakeStepStats().dropped.item<double>(), static_cast<double>(dropped));

  block->eval();
  const torch::Tensor dropless = block->forward(x);
  EXPECT_TRUE(torch::allclose(dropless, NaiveMoe(block, config.moe, x), 1e-5, 1e-5));
  EXPECT_EQ(block->TakeStepStats().dropped.item<double>(), 0.0);
}

// Padded capacity slots change how the kept choices travel, not what they
// sum to: the same outputs, drops and gradients as the unpadded capacity.
TEST(MoeBlockTest, PaddedCapacityGivesTheUnpaddedResultAndGradients) {
  for (const MoeStyle style : {MoeStyle::kMixtral, MoeStyle::kDeepSeek}) {
    const ModelConfig config = Config(style);
    MoeBlock unpadded(config, torch::TensorOptions());
    MoeBlock padded(config, torch::TensorOptions());
    InitRandom(unpadded, 13);
    InitRandom(padded, 13);
    unpadded->SetCapacityFactor(0.5);
    padded->SetCapacityFactor(0.5, /*pad_to_capacity=*/true);
    const torch::Tensor x = torch::randn({2, 5, kHidden});
    const torch::Tensor x_unpadded = x.clone().requires_grad_(true);
    const torch::Tensor x_padded = x.clone().requires_grad_(true);
    const torch::Tensor upstream = torch::randn({2, 5, kHidden});
    const torch::Tensor y_unpadded = unpadded->forward(x_unpadded);
    const torch::Tensor y_padded = padded->forward(x_padded);
    EXPECT_TRUE(torch::allclose(y_padded, y_unpadded, 1e-6, 1e-6))
        << (y_padded - y_unpadded).abs().max();
    (y_unpadded * upstream).sum().backward();
    (y_padded * upstream).sum().backward();
    EXPECT_TRUE(torch::allclose(x_padded.grad(), x_unpadded.grad(), 1e-6, 1e-6));
    const auto expected = unpadded->named_parameters();
    for (const auto& item : padded->named_parameters()) {
      const torch::Tensor& want = expected[item.key()].grad();
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      EXPECT_TRUE(torch::allclose(item.value().grad(), want, 1e-6, 1e-6))
          << item.key() << " " << (item.value().grad() - want).abs().max();
    }
    const double dropped = unpadded->TakeStepStats().dropped.item<double>();
    EXPECT_GT(dropped, 0.0);
    EXPECT_EQ(padded->TakeStepStats().dropped.item<double>(), dropped);
  }
}

// LoRA adapts a router only when named: all-linear leaves it frozen; with
// "gate" its logits gain scaling * B A x (DeepSeek's in fp32, as its base
// product) and the adapter trains.
TEST(MoeBlockTest, RouterLoraOnlyWhenNamed) {
  for (const MoeStyle style : {MoeStyle::kMixtral, MoeStyle::kDeepSeek}) {
    const ModelConfig config = Config(style);
    MoeBlock block(config, torch::TensorOptions());
    InitRandom(block, 5);
    lora::LoraOptions all;
    all.targets = {"all-linear"};
    ASSERT_TRUE(lora::ApplyLora(*block, all).ok());
    EXPECT_FALSE(block->gate->has_adapter());
    EXPECT_TRUE(block->experts->at(0).up_proj->has_adapter());

    MoeBlock named(config, torch::TensorOptions());
    InitRandom(named, 5);
    lora::LoraOptions gate;
    gate.targets = {"gate"};
    gate.spec.rank = 2;
    ASSERT_TRUE(lora::ApplyLora(*named, gate).ok());
    ASSERT_TRUE(named->gate->has_adapter());
    EXPECT_FALSE(named->gate->weight.requires_grad());
    {
      torch::NoGradGuard no_grad;
      named->gate->lora_b().copy_(torch::randn_like(named->gate->lora_b()));
    }
    const torch::Tensor x = torch::randn({5, kHidden});
    const Routing r = named->gate->forward(x);
    const torch::Tensor expected =
        torch::matmul(x, named->gate->weight.t()) +
        named->gate->scaling() *
            torch::matmul(torch::matmul(x, named->gate->lora_a().t()), named->gate->lora_b().t());
    EXPECT_TRUE(torch::allclose(r.logits, expected, 1e-5, 1e-5));
    named->forward(x.view({1, 5, kHidden})).sum().backward();
    ASSERT_TRUE(named->gate->lora_a().grad().defined());
    EXPECT_GT(named->gate->lora_a().grad().abs().sum().item<double>(), 0.0);
    EXPECT_FALSE(named->gate->weight.grad().defined());
  }
}

TEST(MoeBlockTest, AnExpertWithoutTokensGetsAZeroGradient) {
  MoeBlock block(Config(MoeStyle::kMixtral), torch::TensorOptions());
  InitRandom(block, 9);
  {
    // Positive inputs: expert 7's logits (row of -1) are negative, all the
    // others (positive rows) positive, so top-2 never picks expert 7.
    torch::NoGradGuard no_grad;
    block->gate->weight.uniform_(0.1, 1.0);
    block->gate->weight[7].fill_(-1.0);
  }
  const torch::Tensor x = torch::rand({2, 4, kHidden}) + 0.1;
  block->forward(x).sum().backward();
  EXPECT_FALSE(block->last_routing().expert_ids.eq(7).any().item<bool>());
  for (const char* proj : {"w1", "w2", "w3"}) {
    const std::string name = std::string("experts.7.") + proj + ".weight";
    const torch::Tensor g = block->named_parameters()[name].grad();
    ASSERT_TRUE(g.defined()) << name;
    EXPECT_TRUE(g.eq(0).all().item<bool>()) << name;
  }
  // A chosen expert gets a real gradient.
  const int64_t used = block->last_routing().expert_ids[0][0].item<int64_t>();
  EXPECT_GT(block->named_parameters()["experts." + std::to_string(used) + ".w1.weight"]
                .grad()
                .abs()
                .sum()
                .item<double>(),
            0.0);
}

std::vector<std::string> Names(const MoeBlock& block) {
  std::vector<std::string> names;
  for (const auto& item : block->named_parameters()) names.push_back(item.key());
  return names;
}

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST(MoeBlockTest, MixtralNamesAreHfNames) {
  const MoeBlock block(Config(MoeStyle::kMixtral), torch::TensorOptions());
  const auto names = Names(block);
  ASSERT_EQ(names.size(), 1u + 8u * 3u);
  EXPECT_EQ(names[0], "gate.weight");  // HF registers the gate first
  EXPECT_EQ(names[1], "experts.0.w1.weight");
  EXPECT_EQ(names[2], "experts.0.w3.weight");
  EXPECT_EQ(names[3], "experts.0.w2.weight");
  EXPECT_TRUE(Contains(names, "experts.3.w1.weight"));
  EXPECT_FALSE(block->shared);
  EXPECT_EQ(block->named_buffers().size(), 0u);
}

TEST(MoeBlockTest, QwenNamesAreHfNames) {
  const MoeBlock qwen2(Config(MoeStyle::kQwenMoe), torch::TensorOptions());
  const auto names = Names(qwen2);
  ASSERT_EQ(names.size(), 1u + 4u * 3u + 3u + 1u);
  EXPECT_EQ(names[0], "gate.weight");
  EXPECT_EQ(names[1], "experts.0.gate_proj.weight");
  EXPECT_TRUE(Contains(names, "experts.3.down_proj.weight"));
  EXPECT_TRUE(Contains(names, "shared_expert.up_proj.weight"));
  EXPECT_EQ(names.back(), "shared_expert_gate.weight");
  EXPECT_EQ(qwen2->shared_expert_gate->weight.sizes(), torch::IntArrayRef({1, kHidden}));
  EXPECT_EQ(qwen2->shared->gate_proj->weight.sizes(), torch::IntArrayRef({12, kHidden}));

  const MoeBlock qwen3(Qwen3Moe(), torch::TensorOptions());
  EXPECT_EQ(Names(qwen3).size(), 1u + 4u * 3u);
  EXPECT_FALSE(qwen3->shared);
  EXPECT_FALSE(qwen3->shared_expert_gate);
}

TEST(MoeBlockTest, DeepSeekNamesAreHfNames) {
  const MoeBlock block(DeepSeekV3(), torch::TensorOptions().dtype(torch::kBFloat16));
  const auto names = Names(block);
  ASSERT_EQ(names.size(), 8u * 3u + 1u + 3u);
  EXPECT_EQ(names[0], "experts.0.gate_proj.weight");  // HF registers the experts first
  EXPECT_EQ(names[24], "gate.weight");
  EXPECT_EQ(names[25], "shared_experts.gate_proj.weight");
  EXPECT_EQ(block->shared->down_proj->weight.sizes(), torch::IntArrayRef({kHidden, 8}));
  const auto buffers = block->named_buffers();
  ASSERT_EQ(buffers.size(), 1u);
  EXPECT_TRUE(buffers.contains("gate.e_score_correction_bias"));
  EXPECT_EQ(buffers["gate.e_score_correction_bias"].scalar_type(), torch::kFloat32);
  EXPECT_EQ(block->gate->weight.scalar_type(), torch::kBFloat16);
}

TEST(MoeBlockTest, Bf16BlockKeepsTheDtype) {
  MoeBlock block(Config(MoeStyle::kDeepSeek), torch::TensorOptions().dtype(torch::kBFloat16));
  InitRandom(block, 6);
  const torch::Tensor y = block->forward(torch::randn({1, 5, kHidden}).to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({1, 5, kHidden}));
  EXPECT_EQ(block->last_routing().weights.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

TEST(MoeBlockDeathTest, RefusesADenseConfig) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ModelConfig dense;
  dense.hidden_size = kHidden;
  EXPECT_DEATH(MoeBlock(dense, torch::TensorOptions()), "dense config");
}

}  // namespace
}  // namespace fulcrum::models
