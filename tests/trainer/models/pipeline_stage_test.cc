// A CausalLM built for pipeline stages (ModelParallel::pipeline_chunks):
// chaining ForwardChunk over the virtual stages reproduces the whole model's
// logits, loss and gradients; names, loading, init and LoRA match the whole
// model's.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::models {
namespace {

using parallel::pipeline::StageChunk;

ModelConfig TinyConfig(bool tied, int64_t layers = 4) {
  nlohmann::json json = {{"architectures", {"LlamaForCausalLM"}},
                         {"model_type", "llama"},
                         {"vocab_size", 64},
                         {"hidden_size", 32},
                         {"intermediate_size", 48},
                         {"num_hidden_layers", layers},
                         {"num_attention_heads", 4},
                         {"num_key_value_heads", 2},
                         {"max_position_embeddings", 64},
                         {"rope_theta", 10000.0},
                         {"tie_word_embeddings", tied}};
  auto config = ParseModelConfig(json, "tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// Per stage, its chunks (as StagePartition::ChunksOf gives them): virtual
// stage vs has counts[vs] layers and runs on stage vs % stages as chunk
// vs / stages.
std::vector<std::vector<StageChunk>> Chunks(const std::vector<int64_t>& counts, int stages) {
  std::vector<std::vector<StageChunk>> out(static_cast<size_t>(stages));
  int64_t first = 0;
  const int n = static_cast<int>(counts.size());
  for (int vs = 0; vs < n; ++vs) {
    StageChunk chunk;
    chunk.virtual_stage = vs;
    chunk.layers.first = first;
    chunk.layers.count = counts[static_cast<size_t>(vs)];
    chunk.first = vs == 0;
    chunk.last = vs == n - 1;
    first += chunk.layers.count;
    out[static_cast<size_t>(vs % stages)].push_back(chunk);
  }
  return out;
}

CausalLM StageModel(const ModelConfig& config, std::vector<StageChunk> chunks) {
  ModelParallel parallel;
  parallel.pipeline_chunks = std::move(chunks);
  return CausalLM(config, torch::TensorOptions().dtype(torch::kFloat), parallel);
}

std::vector<CausalLM> StageModels(const ModelConfig& config,
                                  const std::vector<std::vector<StageChunk>>& chunks) {
  std::vector<CausalLM> out;
  for (const auto& c : chunks) out.push_back(StageModel(config, c));
  return out;
}

// Copies the whole model's values into the stage (every name must exist there).
void CopyWeights(CausalLM& full, CausalLM& stage) {
  torch::NoGradGuard no_grad;
  const auto params = full->named_parameters();
  for (auto& item : stage->named_parameters()) {
    const torch::Tensor* source = params.find(item.key());
    ASSERT_NE(source, nullptr) << item.key();
    item.value().copy_(*source);
  }
}

struct Batch {
  ForwardInputs inputs;
  torch::Tensor labels;
};

Batch TinyBatch() {
  torch::manual_seed(11);
  Batch batch;
  const torch::Tensor ids = torch::randint(0, 64, {2, 8}, torch::kLong);
  torch::Tensor mask = torch::ones({2, 8}, torch::kLong);
  mask[1].narrow(0, 6, 2).zero_();  // row 1: 6 real tokens, right padding
  batch.inputs = ForwardInputs(ids, mask);
  batch.labels = ids.masked_fill(mask.eq(0), -100);
  return batch;
}

struct PipelineCase {
  std::string label;
  std::vector<int64_t> counts;  // layers per virtual stage
  int stages;
};

class PipelineStageTest : public ::testing::TestWithParam<bool> {};

TEST_P(PipelineStageTest, ChainedChunksReproduceLogitsLossAndGradients) {
  const bool tied = GetParam();
  const ModelConfig config = TinyConfig(tied);
  CausalLM full(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*full, 3);
  const Batch batch = TinyBatch();
  const torch::Tensor full_logits = full->forward(batch.inputs);
  const torch::Tensor full_loss = CrossEntropySum(full_logits, batch.labels);
  full_loss.backward();
  const auto full_params = full->named_parameters();

  for (const PipelineCase& c : std::vector<PipelineCase>{
           {"pp2", {2, 2}, 2}, {"pp2 virtual 2", {1, 1, 1, 1}, 2}, {"pp2 uneven", {1, 3}, 2}}) {
    SCOPED_TRACE(c.label);
    std::vector<CausalLM> stages = StageModels(config, Chunks(c.counts, c.stages));
    for (CausalLM& stage : stages) CopyWeights(full, stage);
    // Forward: each virtual stage's input is a detached leaf, as a received
    // activation is; vs 0 embeds the ids.
    const int n = static_cast<int>(c.counts.size());
    std::vector<torch::Tensor> inputs(static_cast<size_t>(n)), outputs(static_cast<size_t>(n));
    for (int vs = 0; vs < n; ++vs) {
      if (vs > 0) inputs[vs] = outputs[vs - 1].detach().requires_grad_(true);
      outputs[vs] = stages[vs % c.stages]->ForwardChunk(vs / c.stages, batch.inputs, inputs[vs]);
      if (vs < n - 1) {
        EXPECT_EQ(outputs[vs].sizes(), torch::IntArrayRef({2, 8, 32}));
        EXPECT_EQ(outputs[vs].scalar_type(), torch::kFloat);
      }
    }
    const torch::Tensor logits = outputs[n - 1];
    ASSERT_EQ(logits.sizes(), full_logits.sizes());
    EXPECT_TRUE(torch::allclose(logits, full_logits, 1e-6, 1e-6));
    const torch::Tensor loss = CrossEntropySum(logits, batch.labels);
    EXPECT_NEAR(loss.item<double>(), full_loss.item<double>(), 1e-6 * full_loss.item<double>());
    // Backward through the chain: each chunk gets its output's gradient.
    loss.backward();
    for (int vs = n - 2; vs >= 0; --vs) outputs[vs].backward(inputs[vs + 1].grad());

    // Every parameter's gradient (a tied embedding's: the sum of its copies).
    std::map<std::string, torch::Tensor> grads;
    std::map<std::string, int> holders;
    for (CausalLM& stage : stages) {
      for (const auto& item : stage->named_parameters()) {
        ASSERT_TRUE(item.value().grad().defined()) << item.key();
        auto it = grads.find(item.key());
        if (it == grads.end()) {
          grads[item.key()] = item.value().grad().clone();
        } else {
          it->second += item.value().grad();
        }
        ++holders[item.key()];
      }
    }
    // Names: the union equals the whole model's; only the tied embedding twice.
    ASSERT_EQ(grads.size(), full_params.size());
    for (const auto& item : full_params) {
      ASSERT_EQ(grads.count(item.key()), 1u) << item.key();
      const bool copy = tied && item.key() == "model.embed_tokens.weight";
      EXPECT_EQ(holders[item.key()], copy ? 2 : 1) << item.key();
      EXPECT_TRUE(torch::allclose(grads[item.key()], item.value().grad(), 1e-6, 1e-6))
          << item.key() << " max diff "
          << (grads[item.key()] - item.value().grad()).abs().max().item<double>();
    }
  }
}

TEST_P(PipelineStageTest, StageHoldsOnlyItsPartUnderGlobalNames) {
  const bool tied = GetParam();
  const ModelConfig config = TinyConfig(tied);
  // pp 2, virtual 2, layers [1, 1, 1, 1]: stage 0 = layers 0 and 2.
  std::vector<CausalLM> stages = StageModels(config, Chunks({1, 1, 1, 1}, 2));
  const auto first = stages[0]->named_parameters();
  const auto last = stages[1]->named_parameters();
  EXPECT_TRUE(first.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(first.contains("model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(first.contains("model.layers.2.self_attn.q_proj.weight"));
  EXPECT_FALSE(first.contains("model.layers.1.mlp.up_proj.weight"));
  EXPECT_FALSE(first.contains("model.norm.weight"));
  EXPECT_FALSE(first.contains("lm_head.weight"));
  EXPECT_TRUE(last.contains("model.layers.3.mlp.up_proj.weight"));
  EXPECT_TRUE(last.contains("model.norm.weight"));
  EXPECT_EQ(last.contains("lm_head.weight"), !tied);
  EXPECT_EQ(last.contains("model.embed_tokens.weight"), tied);
  // A 3-stage middle stage holds layers only.
  std::vector<CausalLM> three = StageModels(config, Chunks({1, 2, 1}, 3));
  const auto middle = three[1]->named_parameters();
  EXPECT_FALSE(middle.contains("model.embed_tokens.weight"));
  EXPECT_FALSE(middle.contains("model.norm.weight"));
  EXPECT_TRUE(middle.contains("model.layers.1.input_layernorm.weight"));
  EXPECT_TRUE(middle.contains("model.layers.2.input_layernorm.weight"));
  EXPECT_EQ(three[1]->model->layers->size(), 2);
  EXPECT_EQ(three[1]->model->layers->global_index(1), 2);
  // The whole model's forward needs every part.
  const Batch batch = TinyBatch();
  EXPECT_DEATH(stages[0]->forward(batch.inputs), "ForwardChunk");
  EXPECT_DEATH(three[1]->ForwardChunk(0, batch.inputs, torch::Tensor()), "previous stage");
  EXPECT_DEATH(three[1]->ForwardChunk(1, batch.inputs, torch::Tensor()), "chunk 1");
}

TEST_P(PipelineStageTest, TiedCopiesSumOverTheEmbeddingGroupAndCountOnce) {
  const bool tied = GetParam();
  const ModelConfig config = TinyConfig(tied);
  std::vector<CausalLM> stages = StageModels(config, Chunks({1, 2, 1}, 3));
  std::map<std::string, ParamLayout> first, last;
  for (ParamLayout& l : ParallelLayouts(*stages[0])) first[l.name] = l;
  for (ParamLayout& l : ParallelLayouts(*stages[2])) last[l.name] = l;
  const std::string embed = "model.embed_tokens.weight";
  ASSERT_EQ(first.count(embed), 1u);
  EXPECT_EQ(first[embed].grad_sync, tied ? GradSync::kEmbedding : GradSync::kNone);
  EXPECT_TRUE(first[embed].counted_in_norm);
  ASSERT_EQ(last.count(embed), tied ? 1u : 0u);
  if (tied) {
    EXPECT_EQ(last[embed].grad_sync, GradSync::kEmbedding);
    EXPECT_FALSE(last[embed].counted_in_norm);
  }
  for (const auto& [name, layout] : last) {
    if (name != embed) {
      EXPECT_EQ(layout.grad_sync, GradSync::kNone) << name;
    }
  }
  // The whole model's copy (no pp) stays plain.
  CausalLM full(config, torch::TensorOptions().dtype(torch::kFloat));
  for (const ParamLayout& l : ParallelLayouts(*full)) {
    EXPECT_EQ(l.grad_sync, GradSync::kNone) << l.name;
    EXPECT_TRUE(l.counted_in_norm) << l.name;
  }
  // A tied copy needs the embedding group to sum over.
  if (tied) {
    stages[0]->model->embed_tokens->weight.mutable_grad() = torch::ones({64, 32});
    EXPECT_DEATH(SyncPartialGradients(*stages[0]), "embedding_group");
  }
}

TEST_P(PipelineStageTest, RandomInitEqualsTheWholeModels) {
  const bool tied = GetParam();
  const ModelConfig config = TinyConfig(tied);
  CausalLM full(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*full, 21);
  const auto full_params = full->named_parameters();
  for (CausalLM& stage : StageModels(config, Chunks({1, 3}, 2))) {
    InitializeWeights(*stage, 21);
    for (const auto& item : stage->named_parameters()) {
      EXPECT_TRUE(torch::equal(item.value(), full_params[item.key()])) << item.key();
    }
  }
  // ForEachInitialValue hands out exactly the whole model's values, in order.
  std::vector<std::string> names;
  ForEachInitialValue(config, 21, [&](const std::string& name, const torch::Tensor& value) {
    names.push_back(name);
    EXPECT_TRUE(torch::equal(value, full_params[name])) << name;
  });
  EXPECT_EQ(names, full_params.keys());
  // As a cursor: in order, then backwards (a restart), then skipping ahead.
  InitialValueStream stream(config, 21);
  for (const std::string& name : names) {
    EXPECT_TRUE(torch::equal(stream.ValueOf(name), full_params[name])) << name;
  }
  EXPECT_TRUE(torch::equal(stream.ValueOf(names[1]), full_params[names[1]]));
  EXPECT_TRUE(torch::equal(stream.ValueOf(names.back()), full_params[names.back()]));
}

TEST_P(PipelineStageTest, SeededLoraAEqualsTheWholeModels) {
  const bool tied = GetParam();
  const ModelConfig config = TinyConfig(tied);
  lora::LoraOptions options;
  options.spec.rank = 2;
  options.targets = {"all-linear"};
  options.seed = 99;
  CausalLM full(config, torch::TensorOptions().dtype(torch::kFloat));
  ASSERT_TRUE(lora::ApplyLora(*full, options).ok());
  const auto full_params = full->named_parameters();
  int64_t compared = 0;
  for (CausalLM& stage : StageModels(config, Chunks({1, 1, 1, 1}, 2))) {
    // The global generator must not matter.
    torch::manual_seed(static_cast<uint64_t>(compared) + 5);
    ASSERT_TRUE(lora::ApplyLora(*stage, options).ok());
    for (const auto& item : stage->named_parameters()) {
      if (!absl::StrContains(item.key(), "lora_")) continue;
      EXPECT_TRUE(torch::equal(item.value(), full_params[item.key()])) << item.key();
      ++compared;
    }
  }
  EXPECT_EQ(compared, 4 * 7 * 2);  // 4 layers x 7 projections x (A, B)
  // Different modules, different draws; another seed, another draw.
  EXPECT_FALSE(torch::equal(full_params["model.layers.0.self_attn.q_proj.lora_A.weight"],
                            full_params["model.layers.1.self_attn.q_proj.lora_A.weight"]));
  CausalLM other(config, torch::TensorOptions().dtype(torch::kFloat));
  ASSERT_TRUE(lora::ApplyLora(*other, options.WithSeed(100)).ok());
  EXPECT_FALSE(torch::equal(other->named_parameters()["model.layers.0.mlp.up_proj.lora_A.weight"],
                            full_params["model.layers.0.mlp.up_proj.lora_A.weight"]));
  EXPECT_NE(lora::AdapterSeed(99, "model.layers.0.mlp.up_proj"),
            lora::AdapterSeed(99, "model.layers.1.mlp.up_proj"));
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, PipelineStageTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Tied") : std::string("Untied");
                         });

std::string FixtureDir(const std::string& family) {
  return testing::FixturesDir() + "/" + family + "/model";
}

TEST(PipelineStageLoadingTest, StagesLoadTheirTensorsOfTheCheckpoint) {
  for (const std::string family : {"llama", "llama_tied"}) {
    SCOPED_TRACE(family);
    auto config = LoadModelConfig(FixtureDir(family) + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    auto weights = checkpoint::HfWeights::Open(FixtureDir(family));
    ASSERT_TRUE(weights.ok()) << weights.status();
    // The fixture has 2 layers: pp 2, one layer each.
    std::set<std::string> loaded;
    for (CausalLM& stage : StageModels(*config, Chunks({1, 1}, 2))) {
      const absl::Status status = LoadHfWeights(*stage, *weights);
      ASSERT_TRUE(status.ok()) << status;
      for (const auto& item : stage->named_parameters()) {
        EXPECT_TRUE(torch::equal(item.value(), *weights->View(item.key()))) << item.key();
        loaded.insert(item.key());
      }
    }
    EXPECT_EQ(std::vector<std::string>(loaded.begin(), loaded.end()), weights->Names());
  }
}

TEST(PipelineStageLoadingTest, MissingAndUnexpectedTensorsAreStillErrors) {
  auto config = LoadModelConfig(FixtureDir("llama") + "/config.json");
  ASSERT_TRUE(config.ok());
  auto weights = checkpoint::HfWeights::Open(FixtureDir("llama"));
  ASSERT_TRUE(weights.ok());
  const std::string gone = "model.layers.1.mlp.up_proj.weight";
  std::vector<checkpoint::NamedTensor> kept;
  for (const std::string& name : weights->Names()) {
    if (name != gone) kept.push_back(checkpoint::NamedTensor{name, *weights->View(name)});
  }
  const std::string scratch = testing::ScratchDir();
  const std::string dir = scratch + "/missing";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(checkpoint::WriteHfWeights(dir, kept, int64_t{1} << 40).ok());
  auto partial = checkpoint::HfWeights::Open(dir);
  ASSERT_TRUE(partial.ok()) << partial.status();
  // Both stages report it (stage 0 does not hold layer 1, but every rank
  // must fail alike).
  for (CausalLM& stage : StageModels(*config, Chunks({1, 1}, 2))) {
    const absl::Status status = LoadHfWeights(*stage, *partial);
    ASSERT_FALSE(status.ok());
    EXPECT_TRUE(absl::StrContains(status.message(), "missing tensors: " + gone)) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), dir)) << status;
  }
  // A tensor no stage holds is unexpected.
  kept.push_back(checkpoint::NamedTensor{gone, *weights->View(gone)});
  kept.push_back(
      checkpoint::NamedTensor{"model.layers.2.mlp.up_proj.weight", *weights->View(gone)});
  const std::string extra_dir = scratch + "/extra";
  std::filesystem::create_directories(extra_dir);
  ASSERT_TRUE(checkpoint::WriteHfWeights(extra_dir, kept, int64_t{1} << 40).ok());
  auto extra = checkpoint::HfWeights::Open(extra_dir);
  ASSERT_TRUE(extra.ok()) << extra.status();
  CausalLM stage0 = StageModel(*config, Chunks({1, 1}, 2)[0]);
  const absl::Status status = LoadHfWeights(*stage0, *extra);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "unexpected tensors")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "model.layers.2.mlp.up_proj.weight")) << status;
}

}  // namespace
}  // namespace fulcrum::models
