// Pipeline stage models on real ranks: pp = world size, one stage per rank,
// activations and their gradients sent point-to-point, the tied embedding's
// copies summed over the embedding group by SyncPartialGradients. Every
// parameter gradient equals the whole single-rank model's, and the norm
// counts every element exactly once over the ranks; also with activation
// recomputation on the stages (a LoRA first stage's input needs no grad).
#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/comm/communicator_factory.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/parallel_layout.h"
#include "trainer/models/recompute.h"

namespace fulcrum::models {
namespace {

using parallel::pipeline::StageChunk;

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

ModelConfig TinyConfig(bool tied) {
  ModelConfig c;
  c.model_type = "llama";
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 4;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  return c;
}

// This rank's single chunk: 4 layers over 2 ([2, 2]), 3 ([1, 2, 1]) or 4 stages.
StageChunk ChunkOf(int stage, int stages) {
  const std::vector<std::vector<int64_t>> counts = {{4}, {2, 2}, {1, 2, 1}, {1, 1, 1, 1}};
  const std::vector<int64_t>& c = counts.at(static_cast<size_t>(stages - 1));
  StageChunk chunk;
  chunk.virtual_stage = stage;
  for (int s = 0; s < stage; ++s) chunk.layers.first += c[static_cast<size_t>(s)];
  chunk.layers.count = c[static_cast<size_t>(stage)];
  chunk.first = stage == 0;
  chunk.last = stage == stages - 1;
  return chunk;
}

struct Groups {
  std::unique_ptr<parallel::Communicator> world;
  std::unique_ptr<parallel::Communicator> embedding;  // first + last stage; null in the middle
};

Groups MakeGroups() {
  parallel::CommOptions options;
  options.timeout_seconds = 60.0;
  Groups groups;
  auto world =
      parallel::CreateCommunicator(parallel::CommBackend::kMpi, MPI_COMM_WORLD, "pp", options);
  EXPECT_TRUE(world.ok()) << world.status();
  if (world.ok()) groups.world = std::move(*world);
  const int rank = WorldRank(), size = WorldSize();
  const bool ends = rank == 0 || rank == size - 1;
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, ends ? 0 : MPI_UNDEFINED, rank, &sub);
  if (ends) {
    auto embedding =
        parallel::CreateCommunicator(parallel::CommBackend::kMpi, sub, "embedding", options);
    EXPECT_TRUE(embedding.ok()) << embedding.status();
    if (embedding.ok()) groups.embedding = std::move(*embedding);
    MPI_Comm_free(&sub);
  }
  return groups;
}

void RunPipelineMatchesWholeModel(bool tied, bool lora, Recompute recompute = Recompute::kNone) {
  const int rank = WorldRank(), stages = WorldSize();
  const ModelConfig config = TinyConfig(tied);
  lora::LoraOptions lora_options;
  lora_options.spec.rank = 2;
  lora_options.targets = {"all-linear"};
  lora_options.seed = 5;
  // The whole model, same values on every rank.
  CausalLM full(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*full, 13);
  if (lora) {
    ASSERT_TRUE(lora::ApplyLora(*full, lora_options).ok());
  }
  torch::manual_seed(3);
  const torch::Tensor ids = torch::randint(0, 64, {2, 6}, torch::kLong);
  const torch::Tensor labels = ids.clone();
  const ForwardInputs inputs(ids);
  CrossEntropySum(full->forward(inputs), labels).backward();

  Groups groups = MakeGroups();
  ASSERT_NE(groups.world, nullptr);
  ModelParallel parallel;
  parallel.pipeline_chunks = {ChunkOf(rank, stages)};
  parallel.embedding_group = groups.embedding.get();
  CausalLM stage(config, torch::TensorOptions().dtype(torch::kFloat), parallel);
  InitializeWeights(*stage, 13);
  stage->SetRecompute(recompute);
  if (lora) {
    ASSERT_TRUE(lora::ApplyLora(*stage, lora_options).ok());
    {
      torch::NoGradGuard no_grad;  // B non-zero, same on both: A and B both matter
      for (const lora::LoraLayer& l : lora::LoraLayers(*full)) {
        if (l.layer->has_adapter()) l.layer->lora_b().fill_(0.01);
      }
      for (const lora::LoraLayer& l : lora::LoraLayers(*stage)) {
        if (l.layer->has_adapter()) l.layer->lora_b().fill_(0.01);
      }
    }
    for (auto& p : full->parameters()) p.mutable_grad() = torch::Tensor();
    CrossEntropySum(full->forward(inputs), labels).backward();
  }

  // Forward: receive the activation [2, 6, 32], run the chunk, send it on.
  torch::Tensor hidden;
  if (rank > 0) {
    hidden = torch::empty({2, 6, 32});
    groups.world->RecvAsync(hidden, rank - 1)->Wait();
    hidden.requires_grad_(true);
  }
  const torch::Tensor out = stage->ForwardChunk(0, inputs, hidden);
  if (rank < stages - 1) {
    groups.world->SendAsync(out.detach().contiguous(), rank + 1)->Wait();
    torch::Tensor grad = torch::empty_like(out);
    groups.world->RecvAsync(grad, rank + 1)->Wait();
    out.backward(grad);
  } else {
    CrossEntropySum(out, labels).backward();
  }
  if (rank > 0) groups.world->SendAsync(hidden.grad().contiguous(), rank - 1)->Wait();
  SyncPartialGradients(*stage);

  const auto full_params = full->named_parameters();
  int64_t counted = 0;
  for (const ParamLayout& layout : ParallelLayouts(*stage)) {
    const torch::Tensor& reference = full_params[layout.name];
    ASSERT_EQ(layout.param.requires_grad(), reference.requires_grad()) << layout.name;
    if (!layout.param.requires_grad()) continue;
    ASSERT_TRUE(layout.param.grad().defined()) << layout.name;
    EXPECT_TRUE(torch::allclose(layout.param.grad(), reference.grad(), 1e-5, 1e-6))
        << layout.name << " on stage " << rank;
    if (layout.counted_in_norm) counted += layout.param.numel();
  }
  int64_t total = 0;
  MPI_Allreduce(&counted, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  int64_t expected = 0;
  for (const auto& p : full->parameters()) {
    if (p.requires_grad()) expected += p.numel();
  }
  EXPECT_EQ(total, expected);
}

TEST(PipelineStageMpiTest, UntiedFullMatchesWholeModel) {
  RunPipelineMatchesWholeModel(false, false);
}
TEST(PipelineStageMpiTest, TiedFullMatchesWholeModel) { RunPipelineMatchesWholeModel(true, false); }
TEST(PipelineStageMpiTest, TiedLoraMatchesWholeModel) { RunPipelineMatchesWholeModel(true, true); }
TEST(PipelineStageMpiTest, FullRecomputeMatchesWholeModel) {
  RunPipelineMatchesWholeModel(false, false, Recompute::kFull);
  RunPipelineMatchesWholeModel(true, true, Recompute::kFull);
}
TEST(PipelineStageMpiTest, SelectiveRecomputeMatchesWholeModel) {
  RunPipelineMatchesWholeModel(true, true, Recompute::kSelective);
}

}  // namespace
}  // namespace fulcrum::models
