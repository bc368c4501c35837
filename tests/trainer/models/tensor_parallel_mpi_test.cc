// Tensor-parallel CausalLM equals the single-rank model (run under mpirun 2, 3
// and 4): every rank builds the full model and the tp-sharded one loaded
// from the full model's HF checkpoint; gathered logits, the loss and every
// gathered gradient after SyncPartialGradients match within 1e-5 (fp32), for
// kv sharding and kv replication, tied and untied, with and without sequence
// parallelism, full and LoRA. Also the gathered state dict, merged LoRA, and
// the llama / qwen2 fixtures' reference logits. Activation recomputation
// (selective, full) under tp, with and without sp, gives the loss and the
// gradients of none: its collectives run again in backward on every rank.
// The loss through HeadLossSum (lm_head's logits a pass of rows at a time)
// equals the loss of the logits, across several passes too.
#include <gtest/gtest.h>
#include <mpi.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "parallel/comm/communicator_factory.h"
#include "parallel/tensor/vocab_parallel_cross_entropy.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"
#include "trainer/models/parallel_layout.h"
#include "trainer/models/recompute.h"

namespace fulcrum::models {
namespace {

constexpr double kTol = 1e-5;

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int WorldSize() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// The tp group (the whole world) and, for kv replication, the group of ranks
// sharing a kv head.
struct Groups {
  std::unique_ptr<parallel::Communicator> tp;
  std::unique_ptr<parallel::Communicator> kv;
};

Groups MakeGroups(int64_t num_kv_heads) {
  parallel::CommOptions options;
  options.timeout_seconds = 60.0;
  Groups groups;
  auto tp =
      parallel::CreateCommunicator(parallel::CommBackend::kMpi, MPI_COMM_WORLD, "tp", options);
  EXPECT_TRUE(tp.ok()) << tp.status();
  if (tp.ok()) groups.tp = std::move(*tp);
  const int size = WorldSize();
  if (size > num_kv_heads) {
    const int replicas = size / static_cast<int>(num_kv_heads);
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, WorldRank() / replicas, WorldRank(), &sub);
    auto kv = parallel::CreateCommunicator(parallel::CommBackend::kMpi, sub, "kv", options);
    EXPECT_TRUE(kv.ok()) << kv.status();
    if (kv.ok()) groups.kv = std::move(*kv);
    MPI_Comm_free(&sub);
  }
  return groups;
}

// rank 0's fresh ScratchDir, known to every rank.
std::string SharedScratchDir() {
  std::string dir = WorldRank() == 0 ? testing::ScratchDir() : std::string();
  int length = static_cast<int>(dir.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  dir.resize(length);
  MPI_Bcast(dir.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  return dir;
}

struct Variant {
  int64_t num_kv_heads = 1;
  bool tied = false;
  bool sequence_parallel = false;
  bool lora = false;
  bool qk_norm = false;
};

std::string VariantName(const Variant& v) {
  return absl::StrCat("kv", v.num_kv_heads, v.tied ? " tied" : " untied",
                      v.sequence_parallel ? " sp" : "", v.lora ? " lora" : " full",
                      v.qk_norm ? " qk_norm" : "");
}

// Heads 2*world, ffn 12 and vocab 48 divide by 2, 3 and 4; T = 12 too.
ModelConfig TinyConfig(const Variant& v) {
  ModelConfig c;
  c.model_type = "llama";
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 48;
  c.hidden_size = 24;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 2 * WorldSize();
  c.num_kv_heads = v.num_kv_heads;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = v.tied;
  c.attention_bias = true;
  c.o_proj_bias = true;
  c.mlp_bias = true;
  c.qk_norm = v.qk_norm;
  return c;
}

lora::LoraOptions LoraAllLinear() {
  lora::LoraOptions options;
  options.spec.rank = 4;
  options.spec.alpha = 8.0;
  options.targets = {"all-linear"};
  return options;
}

// Same values on every rank: the generator is seeded identically.
CausalLM BuildFullModel(const ModelConfig& config, bool with_lora) {
  CausalLM model(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*model, 7);
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  // Non-zero biases and non-unit norms so that every parameter matters.
  for (auto& p : model->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);
  if (with_lora) {
    EXPECT_TRUE(lora::ApplyLora(*model, LoraAllLinear()).ok());
    for (const lora::LoraLayer& l : lora::LoraLayers(*model)) {
      if (l.layer->has_adapter()) l.layer->lora_b().normal_(0.0, 0.1);
    }
  }
  return model;
}

struct Batch {
  ForwardInputs inputs;
  torch::Tensor labels;  // [B, T]
};

Batch MakeBatch(int64_t vocab) {
  torch::manual_seed(5);
  Batch batch;
  const torch::Tensor ids = torch::randint(vocab, {2, 12}, torch::kLong);
  torch::Tensor mask = torch::ones({2, 12}, torch::kLong);
  mask[1].narrow(0, 9, 3).zero_();  // right padding in row 1
  batch.inputs = ForwardInputs(ids, mask);
  batch.labels = ids.masked_fill(mask.eq(0), kIgnoreIndex);
  return batch;
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// The tp model with the full model's weights: base weights through the HF
// checkpoint path (rank 0 writes, every rank reads its slices), adapters
// sliced directly.
CausalLM BuildShardedModel(const ModelConfig& config, const ModelParallel& parallel,
                           CausalLMImpl& full, bool with_lora, const std::string& dir) {
  CausalLM model(config, torch::TensorOptions().dtype(torch::kFloat), parallel);
  if (WorldRank() == 0) {
    EXPECT_TRUE(checkpoint::WriteHfWeights(dir, HfStateDict(full), 1 << 30, "model").ok());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto weights = checkpoint::HfWeights::Open(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (weights.ok()) {
    const absl::Status loaded = LoadHfWeights(*model, *weights);
    EXPECT_TRUE(loaded.ok()) << loaded;
  }
  if (with_lora) {
    EXPECT_TRUE(lora::ApplyLora(*model, LoraAllLinear()).ok());
    std::map<std::string, torch::Tensor> full_params;
    for (const auto& item : full.named_parameters()) full_params[item.key()] = item.value();
    torch::NoGradGuard no_grad;
    for (const ParamLayout& layout : ParallelLayouts(*model)) {
      if (!absl::StrContains(layout.name, "lora_")) continue;
      layout.param.copy_(NarrowToShard(layout, full_params.at(layout.name)));
    }
  }
  return model;
}

// The tp layout of `v` over `groups` (which must outlive the model).
ModelParallel TpParallel(const Groups& groups, const Variant& v) {
  ModelParallel parallel;
  parallel.tp.group = groups.tp.get();
  parallel.tp.sequence_parallel = v.sequence_parallel;
  parallel.kv_replicas = groups.kv.get();
  return parallel;
}

class TensorParallelTest : public ::testing::TestWithParam<Variant> {};

TEST_P(TensorParallelTest, MatchesSingleRank) {
  const Variant v = GetParam();
  const int n = WorldSize();
  const int64_t kv = v.num_kv_heads;
  // kv must divide the 2n heads and be sharded (n | kv) or replicated (kv | n).
  if ((2 * n) % kv != 0 || (kv % n != 0 && n % kv != 0)) GTEST_SKIP() << "kv " << kv << " tp " << n;
  SCOPED_TRACE(VariantName(v));
  const ModelConfig config = TinyConfig(v);
  Groups groups = MakeGroups(v.num_kv_heads);
  ASSERT_TRUE(groups.tp);
  const ModelParallel parallel = TpParallel(groups, v);

  CausalLM full = BuildFullModel(config, v.lora);
  CausalLM tp = BuildShardedModel(config, parallel, *full, v.lora, SharedScratchDir());
  const Batch batch = MakeBatch(config.vocab_size);

  // The gathered state equals the full model's bit for bit.
  const std::vector<checkpoint::NamedTensor> gathered = GatherFullStateDict(*tp, v.lora);
  std::map<std::string, torch::Tensor> full_state;
  for (const auto& t : HfStateDict(*full)) full_state[t.name] = t.tensor;
  for (const auto& t : lora::AdapterStateDict(*full)) full_state[t.name] = t.tensor;
  ASSERT_EQ(gathered.size(), full_state.size());
  for (const auto& t : gathered) {
    ASSERT_EQ(full_state.count(t.name), 1u) << t.name;
    EXPECT_TRUE(torch::equal(t.tensor, full_state.at(t.name))) << t.name;
  }

  const torch::Tensor full_logits = full->forward(batch.inputs);  // [B, T, V]
  const torch::Tensor full_loss = CrossEntropySum(full_logits, batch.labels);
  full_loss.backward();
  const torch::Tensor tp_logits = tp->forward(batch.inputs);  // [B, T, V/tp]
  EXPECT_EQ(tp_logits.size(2), config.vocab_size / WorldSize());
  EXPECT_LE(MaxDiff(GatherLogits(*tp, tp_logits), full_logits), kTol);
  const torch::Tensor tp_loss = TrainingLossSum(*tp, tp_logits, batch.labels);
  EXPECT_NEAR(tp_loss.item<double>(), full_loss.item<double>(),
              kTol * std::max(1.0, full_loss.item<double>()));
  tp_loss.backward();
  SyncPartialGradients(*tp);

  std::map<std::string, torch::Tensor> full_params;
  for (const auto& item : full->named_parameters()) full_params[item.key()] = item.value();
  int64_t checked = 0;
  for (const ParamLayout& layout : ParallelLayouts(*tp)) {
    const torch::Tensor& ref = full_params.at(layout.name);
    ASSERT_EQ(layout.param.requires_grad(), ref.requires_grad()) << layout.name;
    if (!ref.requires_grad()) continue;
    ASSERT_TRUE(layout.param.grad().defined()) << layout.name;
    const torch::Tensor grad = GatherFull(layout, layout.param.grad());
    ASSERT_EQ(grad.sizes(), ref.grad().sizes()) << layout.name;
    EXPECT_LE(MaxDiff(grad, ref.grad()), kTol) << layout.name;
    ++checked;
  }
  EXPECT_GT(checked, v.lora ? 20 : 30);

  // The loss from the final norm's output (the trainer's path): lm_head's
  // logits a pass of rows at a time over the vocab shards, never [N, V/tp].
  std::map<std::string, torch::Tensor> logits_grads;
  for (const auto& item : tp->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    logits_grads[item.key()] = item.value().grad().clone();
    item.value().mutable_grad() = torch::Tensor();
  }
  const torch::Tensor head_loss = HeadLossSum(*tp, tp->ForwardHidden(batch.inputs), batch.labels);
  EXPECT_NEAR(head_loss.item<double>(), full_loss.item<double>(),
              kTol * std::max(1.0, full_loss.item<double>()));
  head_loss.backward();
  SyncPartialGradients(*tp);
  for (const auto& item : tp->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_LE(MaxDiff(item.value().grad(), logits_grads.at(item.key())), kTol) << item.key();
  }

  if (v.lora) {
    // Merging on shards equals merging the full model.
    lora::MergeLora(*tp);
    lora::MergeLora(*full);
    const std::vector<checkpoint::NamedTensor> merged = GatherFullStateDict(*tp, false);
    std::map<std::string, torch::Tensor> full_merged;
    for (const auto& t : HfStateDict(*full)) full_merged[t.name] = t.tensor;
    ASSERT_EQ(merged.size(), full_merged.size());
    for (const auto& t : merged)
      EXPECT_LE(MaxDiff(t.tensor, full_merged.at(t.name)), 1e-6) << t.name;
  }
}

std::vector<Variant> Variants() {
  std::vector<Variant> out;
  // kv = 4 is sharded at tp 2 and 4, kv = 1 replicated, kv = 2 sharded at
  // tp 2 and replicated at tp 4, kv = 3 sharded at tp 3 (others skip what
  // does not divide).
  for (int64_t kv : {1, 2, 3, 4}) {
    for (bool tied : {false, true}) {
      for (bool sp : {false, true}) {
        for (bool with_lora : {false, true}) out.push_back(Variant{kv, tied, sp, with_lora, false});
      }
    }
  }
  out.push_back(Variant{1, false, true, true, true});
  out.push_back(Variant{2, false, false, false, true});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, TensorParallelTest, ::testing::ValuesIn(Variants()),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           std::string name = VariantName(info.param);
                           for (char& c : name) {
                             if (c == ' ') c = '_';
                           }
                           return name;
                         });

// Loss and this rank's gradients (partial sums synced) of one step of `tp`.
struct TpStep {
  double loss = 0.0;
  std::map<std::string, torch::Tensor> grads;
};

TpStep RunTpStep(CausalLMImpl& tp, Recompute mode, const Batch& batch) {
  tp.SetRecompute(mode);
  for (torch::Tensor& p : tp.parameters()) p.mutable_grad() = torch::Tensor();
  const torch::Tensor loss = TrainingLossSum(tp, tp.forward(batch.inputs), batch.labels);
  loss.backward();
  SyncPartialGradients(tp);
  TpStep step;
  step.loss = loss.item<double>();
  for (const auto& item : tp.named_parameters()) {
    if (item.value().requires_grad()) step.grads[item.key()] = item.value().grad();
  }
  return step;
}

TEST(TensorParallelRecompute, SelectiveAndFullMatchNone) {
  Variant v;
  v.num_kv_heads = WorldSize();  // sharded kv heads at every world size
  v.qk_norm = true;              // the per-head norms are recomputed too
  for (bool sp : {false, true}) {
    for (bool with_lora : {false, true}) {
      v.sequence_parallel = sp;
      v.lora = with_lora;
      SCOPED_TRACE(VariantName(v));
      const ModelConfig config = TinyConfig(v);
      Groups groups = MakeGroups(v.num_kv_heads);
      ASSERT_TRUE(groups.tp);
      CausalLM full = BuildFullModel(config, with_lora);
      CausalLM tp =
          BuildShardedModel(config, TpParallel(groups, v), *full, with_lora, SharedScratchDir());
      const Batch batch = MakeBatch(config.vocab_size);
      const TpStep none = RunTpStep(*tp, Recompute::kNone, batch);
      for (Recompute mode : {Recompute::kSelective, Recompute::kFull}) {
        SCOPED_TRACE(mode == Recompute::kFull ? "full" : "selective");
        const TpStep got = RunTpStep(*tp, mode, batch);
        EXPECT_EQ(got.loss, none.loss);
        ASSERT_EQ(got.grads.size(), none.grads.size());
        for (const auto& [name, grad] : none.grads) {
          ASSERT_TRUE(grad.defined() && got.grads.at(name).defined()) << name;
          EXPECT_LE(MaxDiff(got.grads.at(name), grad), 1e-6) << name;
        }
      }
    }
  }
}

// Vocab shards of 2^19 rows: a frozen head's passes take 16 rows (32 MiB of
// fp32 logits), a trained head's 64 (128 MiB), so 84 rows run in several
// passes, the last partial, each with its two all-reduces. Against
// VocabParallelCrossEntropySum of the shard's materialised logits, on the
// same ranks; the hidden states enter the tp region as lm_head's input does.
TEST(TensorParallelHeadLoss, SpansPassesOverVocabShards) {
  Groups groups = MakeGroups(1);
  ASSERT_TRUE(groups.tp);
  parallel::tensor::TensorParallel tp;
  tp.group = groups.tp.get();
  const int64_t shard_rows = int64_t{1} << 19, h = 4;
  const int64_t vocab = shard_rows * WorldSize();
  const parallel::tensor::ShardRange range =
      parallel::tensor::EvenShard(vocab, WorldRank(), WorldSize());
  ASSERT_EQ(HeadChunkRows(84, shard_rows, /*cuda=*/false, /*weight_trains=*/false), 16);
  ASSERT_EQ(HeadChunkRows(84, shard_rows, /*cuda=*/false, /*weight_trains=*/true), 64);
  struct Case {
    const char* name;
    torch::ScalarType dtype;
    bool weight_trains;
  };
  for (const Case& c : {Case{"fp32, frozen head", torch::kFloat, false},
                        Case{"fp32, trained head", torch::kFloat, true},
                        Case{"bf16, trained head", torch::kBFloat16, true}}) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(11);  // the same hidden states and labels on every rank
    const torch::Tensor hidden0 = torch::randn({4, 21, h}).to(c.dtype);
    torch::Tensor labels = torch::randint(vocab, {4, 21}, torch::kLong);
    labels[1].narrow(0, 5, 7).fill_(kIgnoreIndex);
    labels[2][3] = vocab - 1;  // the last shard's last row
    const torch::Tensor weight0 =
        torch::randn({vocab, h}).narrow(0, range.start, range.length).to(c.dtype) * 3;
    const torch::Tensor h1 = hidden0.clone().requires_grad_(true);
    const torch::Tensor w1 = weight0.clone().requires_grad_(c.weight_trains);
    const torch::Tensor h2 = hidden0.clone().requires_grad_(true);
    const torch::Tensor w2 = weight0.clone().requires_grad_(c.weight_trains);

    const torch::Tensor logits =
        torch::nn::functional::linear(parallel::tensor::ColumnParallelInput(h1, tp), w1)
            .to(torch::kFloat);
    const torch::Tensor expected =
        parallel::tensor::VocabParallelCrossEntropySum(logits, labels, range.start, tp);
    HeadVocab shard;
    shard.start = range.start;
    shard.tp = tp;
    const torch::Tensor got =
        LinearCrossEntropySum(parallel::tensor::ColumnParallelInput(h2, tp), w2, labels, shard);
    const double tol = c.dtype == torch::kFloat ? 1e-5 : 1e-2;
    EXPECT_NEAR(got.item<double>(), expected.item<double>(), tol * expected.item<double>());
    torch::Tensor spread = torch::stack({got.detach(), -got.detach()});
    groups.tp->AllReduce(spread, parallel::ReduceOp::kMax);
    EXPECT_EQ(spread[0].item<float>(), -spread[1].item<float>()) << "the loss differs over tp";
    (expected * 0.5).backward();
    (got * 0.5).backward();
    EXPECT_LE(MaxDiff(h2.grad().to(torch::kFloat), h1.grad().to(torch::kFloat)),
              tol * h1.grad().abs().max().item<double>());
    if (c.weight_trains) {
      ASSERT_EQ(w2.grad().scalar_type(), c.dtype);
      EXPECT_LE(MaxDiff(w2.grad().to(torch::kFloat), w1.grad().to(torch::kFloat)),
                tol * w1.grad().abs().max().item<double>());
    } else {
      EXPECT_FALSE(w2.grad().defined());
    }
    torch::NoGradGuard no_grad;
    EXPECT_NEAR(LinearCrossEntropySum(h2, w2, labels, shard).item<double>(), got.item<double>(),
                1e-6 * got.item<double>());
  }
}

TEST(TensorParallelLoading, ShapeMismatchNamesTheFullShape) {
  Variant v;
  v.num_kv_heads = WorldSize();
  ModelConfig wrong = TinyConfig(v);
  wrong.intermediate_size = 24;
  CausalLM full = BuildFullModel(wrong, false);
  const std::string dir = SharedScratchDir();
  if (WorldRank() == 0) {
    ASSERT_TRUE(checkpoint::WriteHfWeights(dir, HfStateDict(*full), 1 << 30, "model").ok());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  Groups groups = MakeGroups(v.num_kv_heads);
  ModelParallel parallel;
  parallel.tp.group = groups.tp.get();
  CausalLM tp(TinyConfig(v), torch::TensorOptions().dtype(torch::kFloat), parallel);
  auto weights = checkpoint::HfWeights::Open(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const absl::Status status = LoadHfWeights(*tp, *weights);
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "model.layers.0.mlp.gate_proj.weight [24,24] "
                                "(model expects [12,24])"))
      << status;
}

// The fixtures have 4 heads: tp 2 shards the 2 kv heads, tp 4 replicates them.
class FixtureTensorParallelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTensorParallelTest, LogitsMatchReference) {
  if (4 % WorldSize() != 0) GTEST_SKIP() << "4 heads do not divide by " << WorldSize();
  const std::string dir = testing::FixturesDir() + "/" + GetParam();
  auto config = LoadModelConfig(dir + "/model/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = checkpoint::HfWeights::Open(dir + "/model");
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto expected = checkpoint::HfWeights::Open(dir, "expected");
  ASSERT_TRUE(expected.ok()) << expected.status();
  const auto get = [&](const std::string& name) { return expected->View(name)->clone(); };
  for (bool sp : {false, true}) {
    Groups groups = MakeGroups(config->num_kv_heads);
    ModelParallel parallel;
    parallel.tp.group = groups.tp.get();
    parallel.tp.sequence_parallel = sp;
    parallel.kv_replicas = groups.kv.get();
    CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat), parallel);
    const absl::Status loaded = LoadHfWeights(*model, *weights);
    ASSERT_TRUE(loaded.ok()) << loaded;
    const torch::Tensor mask = get("attention_mask");
    const torch::Tensor labels = get("labels");
    const torch::Tensor logits_shard = model->forward(ForwardInputs(get("input_ids"), mask));
    const torch::Tensor logits = GatherLogits(*model, logits_shard);
    const torch::Tensor ref = get("logits");
    // |got - ref| <= 1e-4 + 1e-4 |ref| where attention_mask == 1 (the fixture's tolerance).
    const torch::Tensor valid = mask.to(torch::kBool).unsqueeze(-1).expand_as(ref);
    const torch::Tensor excess =
        ((logits - ref).abs() - (1e-4 + 1e-4 * ref.abs())).masked_select(valid);
    EXPECT_LE(excess.max().item<double>(), 0.0) << "sp " << sp;
    const double loss =
        (TrainingLossSum(*model, logits_shard, labels) / CountTargets(labels)).item<double>();
    EXPECT_NEAR(loss, get("loss")[0].item<double>(), 1e-5) << "sp " << sp;

    // The fixture's PEFT adapter, each rank reading its slices.
    auto lora_options = lora::LoadPeftAdapter(*model, dir + "/lora");
    ASSERT_TRUE(lora_options.ok()) << lora_options.status();
    const torch::Tensor lora_logits =
        GatherLogits(*model, model->forward(ForwardInputs(get("input_ids"), mask)));
    const torch::Tensor lora_ref = get("lora_logits");
    const torch::Tensor lora_excess =
        ((lora_logits - lora_ref).abs() - (1e-4 + 1e-4 * lora_ref.abs())).masked_select(valid);
    EXPECT_LE(lora_excess.max().item<double>(), 0.0) << "lora, sp " << sp;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FixtureTensorParallelTest, ::testing::Values("llama", "qwen2"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace fulcrum::models
