// Tensor-parallel shard arithmetic without ranks: a fake tp group gives a
// rank and size (its collectives fail the test), enough to build a rank's
// shard of the model, check parameter shapes and layouts, and load its
// slices of an HF checkpoint. The collectives are covered by
// tensor_parallel_mpi_test.
#include "trainer/models/parallel_layout.h"

#include <gtest/gtest.h>

#include <array>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "tests/parallel/silent_communicator.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {
namespace {

using parallel::ReduceOp;
using parallel::WorkHandle;
using parallel::tensor::ShardKind;

// A tp rank's view of its group: shard arithmetic only, no communication.
class FakeGroup : public testing::SilentCommunicator {
 public:
  FakeGroup(int rank, int size) : SilentCommunicator(rank, size, "tp") {}
};

// 8 heads, 2 kv heads (replicated at tp 4), ffn 16, vocab 32.
ModelConfig TinyConfig(bool tied = false) {
  ModelConfig c;
  c.model_type = "llama";
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 16;
  c.num_layers = 1;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 2;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = tied;
  c.attention_bias = true;
  c.o_proj_bias = true;
  return c;
}

ModelParallel Parallel(FakeGroup& group, bool sp) {
  ModelParallel p;
  p.tp.group = &group;
  p.tp.sequence_parallel = sp;
  return p;
}

TEST(ShardHeads, ShardsOrReplicatesKvHeadsLikeRepeatKv) {
  for (const auto& [heads, kv, tp] : std::vector<std::array<int64_t, 3>>{
           {8, 2, 4}, {8, 4, 2}, {8, 1, 4}, {6, 3, 3}, {6, 1, 3}, {8, 8, 4}}) {
    for (int rank = 0; rank < tp; ++rank) {
      FakeGroup group(rank, static_cast<int>(tp));
      parallel::tensor::TensorParallel p;
      p.group = &group;
      const HeadShard s = ShardHeads(heads, kv, p);
      EXPECT_EQ(s.num_heads, heads / tp);
      EXPECT_EQ(s.num_kv_heads, kv >= tp ? kv / tp : 1);
      EXPECT_EQ(s.kv_replicas, kv >= tp ? 1 : tp / kv);
      // HF repeat_kv: query head h uses kv head h / (heads / kv); every local
      // query head must use one of this rank's kv heads, in order.
      for (int64_t i = 0; i < s.num_heads; ++i) {
        const int64_t h = rank * s.num_heads + i;
        const int64_t local_group = s.num_heads / s.num_kv_heads;
        EXPECT_EQ(h / (heads / kv), s.first_kv_head + i / local_group)
            << heads << "/" << kv << " tp " << tp << " rank " << rank << " head " << h;
      }
    }
  }
}

TEST(ParallelModel, ShardShapes) {
  FakeGroup group(1, 4);
  CausalLM model(TinyConfig(), torch::TensorOptions().dtype(torch::kFloat), Parallel(group, true));
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& item : model->named_parameters())
    shapes[item.key()] = item.value().sizes().vec();
  const std::string a = "model.layers.0.self_attn.";
  EXPECT_EQ(shapes.at("model.embed_tokens.weight"), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(shapes.at(a + "q_proj.weight"), (std::vector<int64_t>{4, 16}));  // 2 heads x 2
  EXPECT_EQ(shapes.at(a + "q_proj.bias"), (std::vector<int64_t>{4}));
  EXPECT_EQ(shapes.at(a + "k_proj.weight"), (std::vector<int64_t>{2, 16}));  // 1 kv head
  EXPECT_EQ(shapes.at(a + "v_proj.bias"), (std::vector<int64_t>{2}));
  EXPECT_EQ(shapes.at(a + "o_proj.weight"), (std::vector<int64_t>{16, 4}));
  EXPECT_EQ(shapes.at(a + "o_proj.bias"), (std::vector<int64_t>{16}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.gate_proj.weight"), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.down_proj.weight"), (std::vector<int64_t>{16, 4}));
  EXPECT_EQ(shapes.at("model.norm.weight"), (std::vector<int64_t>{16}));
  EXPECT_EQ(shapes.at("lm_head.weight"), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(model->model->embed_tokens->vocab_start(), 8);
}

std::map<std::string, ParamLayout> LayoutsByName(CausalLMImpl& model) {
  std::map<std::string, ParamLayout> out;
  for (ParamLayout& l : ParallelLayouts(model)) out[l.name] = l;
  return out;
}

TEST(ParallelLayouts, RulesUnderSequenceParallelAndLora) {
  const std::string a = "model.layers.0.self_attn.", m = "model.layers.0.mlp.";
  for (int rank : {0, 1, 2}) {
    FakeGroup group(rank, 4);
    CausalLM model(TinyConfig(), torch::TensorOptions().dtype(torch::kFloat),
                   Parallel(group, true));
    lora::LoraOptions options;
    options.spec.rank = 2;
    options.targets = {"all-linear"};
    ASSERT_TRUE(lora::ApplyLora(*model, options).ok());
    const auto layouts = LayoutsByName(*model);
    ASSERT_EQ(layouts.size(), model->named_parameters().size());
    const auto check = [&](const std::string& name, ShardKind kind, int64_t dim, int replicas,
                           GradSync sync, bool counted) {
      SCOPED_TRACE(name + " rank " + std::to_string(rank));
      const ParamLayout& l = layouts.at(name);
      EXPECT_EQ(l.kind, kind);
      EXPECT_EQ(l.shard_dim, dim);
      EXPECT_EQ(l.kv_replicas, replicas);
      EXPECT_EQ(l.grad_sync, sync);
      EXPECT_EQ(l.counted_in_norm, counted);
    };
    const bool rank0 = rank == 0, even = rank % 2 == 0;
    check("model.embed_tokens.weight", ShardKind::kVocab, 0, 1, GradSync::kNone, true);
    check(a + "q_proj.weight", ShardKind::kColumn, 0, 1, GradSync::kNone, true);
    check(a + "q_proj.lora_A.weight", ShardKind::kReplicated, -1, 1, GradSync::kTp, rank0);
    check(a + "q_proj.lora_B.weight", ShardKind::kColumn, 0, 1, GradSync::kNone, true);
    check(a + "k_proj.weight", ShardKind::kColumn, 0, 2, GradSync::kKvReplicas, even);
    check(a + "v_proj.bias", ShardKind::kColumn, 0, 2, GradSync::kKvReplicas, even);
    check(a + "v_proj.lora_B.weight", ShardKind::kColumn, 0, 2, GradSync::kKvReplicas, even);
    check(a + "v_proj.lora_A.weight", ShardKind::kReplicated, -1, 1, GradSync::kTp, rank0);
    check(a + "o_proj.weight", ShardKind::kRow, 1, 1, GradSync::kNone, true);
    check(a + "o_proj.bias", ShardKind::kReplicated, -1, 1, GradSync::kTp, rank0);
    check(a + "o_proj.lora_A.weight", ShardKind::kRow, 1, 1, GradSync::kNone, true);
    check(a + "o_proj.lora_B.weight", ShardKind::kReplicated, -1, 1, GradSync::kTp, rank0);
    check(m + "down_proj.weight", ShardKind::kRow, 1, 1, GradSync::kNone, true);
    check("model.layers.0.input_layernorm.weight", ShardKind::kReplicated, -1, 1, GradSync::kTp,
          rank0);
    check("model.norm.weight", ShardKind::kReplicated, -1, 1, GradSync::kTp, rank0);
    check("lm_head.weight", ShardKind::kColumn, 0, 1, GradSync::kNone, true);
    EXPECT_EQ(FullShape(layouts.at(a + "k_proj.weight")), (std::vector<int64_t>{4, 16}));
    EXPECT_EQ(FullShape(layouts.at(a + "o_proj.lora_A.weight")), (std::vector<int64_t>{2, 16}));
  }
}

TEST(ParallelLayouts, WithoutSequenceParallelNormsAndRowBiasesAreComplete) {
  FakeGroup group(1, 2);
  CausalLM model(TinyConfig(), torch::TensorOptions().dtype(torch::kFloat), Parallel(group, false));
  const auto layouts = LayoutsByName(*model);
  const ParamLayout& norm = layouts.at("model.norm.weight");
  EXPECT_EQ(norm.grad_sync, GradSync::kNone);
  EXPECT_FALSE(norm.counted_in_norm);  // rank 1 of 2: counted on rank 0 only
  EXPECT_EQ(layouts.at("model.layers.0.self_attn.o_proj.bias").grad_sync, GradSync::kNone);
  // kv 2 at tp 2: sharded, not replicated.
  EXPECT_EQ(layouts.at("model.layers.0.self_attn.k_proj.weight").kv_replicas, 1);
}

// A row layer's replicated lora_B multiplies this rank's partial sum (one
// reduction per layer, adapter included), so its gradient is partial also
// without sp; the row bias, added after the reduction, is complete.
TEST(ParallelLayouts, RowLoraBIsPartialWithoutSequenceParallel) {
  FakeGroup group(0, 2);
  CausalLM model(TinyConfig(), torch::TensorOptions().dtype(torch::kFloat), Parallel(group, false));
  lora::LoraOptions options;
  options.spec.rank = 2;
  options.targets = {"all-linear"};
  ASSERT_TRUE(lora::ApplyLora(*model, options).ok());
  const auto layouts = LayoutsByName(*model);
  for (const std::string row :
       {"model.layers.0.self_attn.o_proj.", "model.layers.0.mlp.down_proj."}) {
    EXPECT_EQ(layouts.at(row + "lora_B.weight").grad_sync, GradSync::kTp) << row;
    EXPECT_EQ(layouts.at(row + "lora_A.weight").kind, ShardKind::kRow) << row;
  }
  EXPECT_EQ(layouts.at("model.layers.0.self_attn.o_proj.bias").grad_sync, GradSync::kNone);
}

TEST(ParallelLayouts, WithoutTpEverythingIsReplicatedAndLocal) {
  CausalLM model(TinyConfig(), torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*model, 3);
  for (const ParamLayout& l : ParallelLayouts(*model)) {
    EXPECT_EQ(l.kind, ShardKind::kReplicated) << l.name;
    EXPECT_EQ(l.grad_sync, GradSync::kNone) << l.name;
    EXPECT_TRUE(l.counted_in_norm) << l.name;
    EXPECT_EQ(FullShape(l), l.param.sizes().vec()) << l.name;
    EXPECT_TRUE(GatherFull(l, l.param).is_same(l.param)) << l.name;
  }
  const torch::Tensor ids = torch::randint(32, {2, 6}, torch::kLong);
  const torch::Tensor logits = model->forward(ForwardInputs(ids));
  EXPECT_TRUE(torch::equal(GatherLogits(*model, logits), logits));
  EXPECT_TRUE(torch::equal(TrainingLossSum(*model, logits, ids), CrossEntropySum(logits, ids)));
  SyncPartialGradients(*model);  // no tp: nothing to do, no communication
}

// The loss from the final norm's output equals the loss of the logits, with
// the same gradients: through LinearCrossEntropySum (untied and tied
// lm_head), and through the logits when lm_head carries an adapter.
TEST(HeadLossSum, EqualsTheLossOfTheLogits) {
  for (const bool tied : {false, true}) {
    for (const bool adapted_head : {false, true}) {
      if (tied && adapted_head) continue;
      SCOPED_TRACE(::testing::Message() << "tied " << tied << " adapted head " << adapted_head);
      CausalLM model(TinyConfig(tied), torch::TensorOptions().dtype(torch::kFloat));
      InitializeWeights(*model, 3);
      if (adapted_head) {
        lora::LoraSpec spec;
        spec.rank = 2;
        model->lm_head->AttachAdapter(spec);
        torch::NoGradGuard no_grad;
        model->lm_head->lora_b().normal_();
      }
      const torch::Tensor ids = torch::randint(32, {2, 6}, torch::kLong);
      const auto gradients = [&] {
        std::vector<torch::Tensor> grads;
        for (const torch::Tensor& p : model->parameters()) {
          grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
          p.mutable_grad() = torch::Tensor();
        }
        return grads;
      };
      const torch::Tensor expected =
          TrainingLossSum(*model, model->forward(ForwardInputs(ids)), ids);
      expected.backward();
      const std::vector<torch::Tensor> expected_grads = gradients();
      const torch::Tensor got = HeadLossSum(*model, model->ForwardHidden(ForwardInputs(ids)), ids);
      got.backward();
      const std::vector<torch::Tensor> got_grads = gradients();
      EXPECT_NEAR(got.item<double>(), expected.item<double>(), 1e-5 * expected.item<double>());
      ASSERT_EQ(got_grads.size(), expected_grads.size());
      for (size_t i = 0; i < got_grads.size(); ++i) {
        ASSERT_EQ(got_grads[i].defined(), expected_grads[i].defined()) << i;
        if (!got_grads[i].defined()) continue;
        EXPECT_TRUE(torch::allclose(got_grads[i], expected_grads[i], 1e-5, 1e-6))
            << i << ": " << (got_grads[i] - expected_grads[i]).abs().max();
      }
    }
  }
}

// Each rank's LoadHfWeights keeps exactly its slice of the full checkpoint.
TEST(ParallelLoading, EveryRankReadsItsSlices) {
  for (bool tied : {false, true}) {
    CausalLM full(TinyConfig(tied), torch::TensorOptions().dtype(torch::kFloat));
    InitializeWeights(*full, 5);
    const std::string dir = testing::ScratchDir();
    ASSERT_TRUE(checkpoint::WriteHfWeights(dir, HfStateDict(*full), 1 << 30).ok());
    auto weights = checkpoint::HfWeights::Open(dir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    std::map<std::string, torch::Tensor> ref;
    for (const auto& t : HfStateDict(*full)) ref[t.name] = t.tensor;
    for (int rank = 0; rank < 4; ++rank) {
      FakeGroup group(rank, 4);
      CausalLM model(TinyConfig(tied), torch::TensorOptions().dtype(torch::kFloat),
                     Parallel(group, false));
      const absl::Status loaded = LoadHfWeights(*model, *weights);
      ASSERT_TRUE(loaded.ok()) << loaded;
      const auto layouts = LayoutsByName(*model);
      // Spelled out for the kv-replicated k_proj: rank r holds kv head r / 2.
      const torch::Tensor k = layouts.at("model.layers.0.self_attn.k_proj.weight").param;
      EXPECT_TRUE(torch::equal(
          k, ref.at("model.layers.0.self_attn.k_proj.weight").narrow(0, (rank / 2) * 2, 2)));
      const torch::Tensor o = layouts.at("model.layers.0.self_attn.o_proj.weight").param;
      EXPECT_TRUE(
          torch::equal(o, ref.at("model.layers.0.self_attn.o_proj.weight").narrow(1, rank * 4, 4)));
      for (const auto& [name, layout] : layouts) {
        EXPECT_TRUE(torch::equal(layout.param, NarrowToShard(layout, ref.at(name)))) << name;
      }
    }
  }
}

TEST(ParallelLoading, PeftAdapterSlices) {
  const std::string dir = testing::FixturesDir() + "/llama";
  auto config = LoadModelConfig(dir + "/model/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto adapter = checkpoint::HfWeights::Open(dir + "/lora", "adapter_model");
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  const std::string path = "model.layers.1.self_attn.";
  const torch::Tensor q_b = adapter->View(lora::PeftKey(path + "q_proj", true))->clone();
  const torch::Tensor v_b = adapter->View(lora::PeftKey(path + "v_proj", true))->clone();
  const torch::Tensor q_a = adapter->View(lora::PeftKey(path + "q_proj", false))->clone();
  FakeGroup group(3, 4);  // 4 heads, 2 kv heads: rank 3 holds q head 3, kv head 1
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat), Parallel(group, false));
  auto options = lora::LoadPeftAdapter(*model, dir + "/lora");
  ASSERT_TRUE(options.ok()) << options.status();
  const int64_t d = config->head_dim;
  auto* attn = model->model->layers[1]->as<DecoderLayerImpl>()->self_attn.get();
  EXPECT_TRUE(torch::equal(attn->q_proj->lora_b(), q_b.narrow(0, 3 * d, d)));
  EXPECT_TRUE(torch::equal(attn->q_proj->lora_a(), q_a));
  EXPECT_TRUE(torch::equal(attn->v_proj->lora_b(), v_b.narrow(0, 1 * d, d)));
}

TEST(ParallelLora, RowAdapterInitIsTheSliceOfTheSingleRankDraw) {
  lora::LoraSpec spec;
  spec.rank = 3;
  torch::manual_seed(21);
  lora::LoraLinear full(8, 6, false, torch::TensorOptions().dtype(torch::kFloat));
  full->AttachAdapter(spec);
  for (int rank = 0; rank < 2; ++rank) {
    FakeGroup group(rank, 2);
    lora::LinearParallel row;
    row.shard = lora::LinearShard::kRow;
    row.tp.group = &group;
    torch::manual_seed(21);
    lora::LoraLinear shard(8, 6, false, torch::TensorOptions().dtype(torch::kFloat), row);
    shard->AttachAdapter(spec);
    EXPECT_EQ(shard->weight.sizes(), (torch::IntArrayRef{6, 4}));
    EXPECT_TRUE(torch::equal(shard->lora_a(), full->lora_a().narrow(1, rank * 4, 4)));
    EXPECT_EQ(shard->lora_b().sizes(), (torch::IntArrayRef{6, 3}));
    EXPECT_TRUE(torch::equal(shard->LocalLoraA(full->lora_a()), shard->lora_a()));
  }
}

}  // namespace
}  // namespace fulcrum::models
