// A MoE block under expert parallelism (the world as the ep group, 2, 3 or 4
// ranks, two experts per rank) against the whole block on one rank: each
// rank's tokens get the same output; router, shared-expert and input
// gradients are the rank's own; a held expert's gradient is the sum over
// every rank's tokens of the whole block's gradient for that expert.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "parallel/comm/communicator_factory.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::models {
namespace {

std::unique_ptr<parallel::Communicator> World() {
  parallel::CommOptions options;
  options.timeout_seconds = 60.0;
  auto comm =
      parallel::CreateCommunicator(parallel::CommBackend::kMpi, MPI_COMM_WORLD, "ep", options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return std::move(comm).value();
}

ModelConfig Config(MoeStyle style, int64_t experts) {
  ModelConfig config;
  config.hidden_size = 16;
  config.moe.style = style;
  config.moe.num_experts = experts;
  config.moe.experts_per_token = 2;
  config.moe.expert_intermediate_size = 8;
  if (style == MoeStyle::kMixtral) {
    config.moe.normalize_weights = true;
  } else {
    config.moe.num_shared_experts = 1;
    config.moe.shared_intermediate_size = 8;
    config.moe.routed_scaling_factor = 1.5;
  }
  return config;
}

class ExpertParallelBlockTest : public ::testing::TestWithParam<MoeStyle> {};

TEST_P(ExpertParallelBlockTest, MatchesTheWholeBlock) {
  auto world = World();
  const int rank = world->rank(), size = world->size();
  const ModelConfig config = Config(GetParam(), 2 * size);
  const auto options = torch::TensorOptions().dtype(torch::kDouble);
  // The same whole block on every rank.
  torch::manual_seed(7);
  MoeBlock whole(config, options);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : whole->parameters()) p.normal_(0.0, 0.3);
  }
  ModelParallel parallel;
  parallel.expert_parallel = world.get();
  MoeBlock sharded(config, options, parallel);
  const auto whole_params = whole->named_parameters();
  {
    torch::NoGradGuard no_grad;
    for (auto& item : sharded->named_parameters()) {
      ASSERT_TRUE(whole_params.contains(item.key())) << item.key();
      item.value().copy_(whole_params[item.key()]);
    }
  }
  ASSERT_EQ(sharded->experts->size(), 2);
  EXPECT_EQ(sharded->experts->global_index(0), 2 * rank);

  // Uneven token counts per rank.
  torch::manual_seed(100 + rank);
  const torch::Tensor x = torch::randn({1, 4 + rank, 16}, options);
  const torch::Tensor probe = torch::randn({1, 4 + rank, 16}, options);
  const torch::Tensor x_whole = x.clone().requires_grad_(true);
  const torch::Tensor x_sharded = x.clone().requires_grad_(true);
  const torch::Tensor y_whole = whole->forward(x_whole);
  const torch::Tensor y_sharded = sharded->forward(x_sharded);
  EXPECT_TRUE(torch::allclose(y_sharded, y_whole, 1e-12, 1e-12));
  (y_whole * probe).sum().backward();
  (y_sharded * probe).sum().backward();
  EXPECT_TRUE(torch::allclose(x_sharded.grad(), x_whole.grad(), 1e-12, 1e-12));

  // Every rank's tokens reach an expert's owner: the whole block's expert
  // gradients summed over the ranks (in the whole block's order, the same
  // on every rank).
  std::map<std::string, torch::Tensor> summed;
  for (const auto& item : whole_params) {
    if (item.key().rfind("experts.", 0) != 0) continue;
    summed[item.key()] = item.value().grad().clone();
    world->AllReduce(summed[item.key()]);
  }
  for (auto& item : sharded->named_parameters()) {
    const auto it = summed.find(item.key());
    const torch::Tensor expected =
        it != summed.end() ? it->second : whole_params[item.key()].grad();
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::allclose(item.value().grad(), expected, 1e-10, 1e-12)) << item.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Styles, ExpertParallelBlockTest,
                         ::testing::Values(MoeStyle::kMixtral, MoeStyle::kDeepSeek),
                         [](const auto& info) {
                           return info.param == MoeStyle::kMixtral ? "Mixtral" : "DeepSeek";
                         });

}  // namespace
}  // namespace fulcrum::models
