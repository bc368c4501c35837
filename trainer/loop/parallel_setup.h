// The one place where a command turns the recipe's parallel section into the
// device mesh and the model's view of it. Everything that communicates (the
// model's tp layers, the gradient buckets, the loader's dp shard, the
// checkpoint gathers) takes its groups from the ParallelRuntime built here.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/mesh/device_mesh.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/runtime/world.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

struct ParallelRuntime {
  std::unique_ptr<parallel::DeviceMesh> mesh;
  models::ModelParallel model;  // tp group, sequence parallel, kv-head replica group
  int dp_rank() const { return mesh->coordinates().dp; }
  int dp_size() const { return mesh->layout().degrees().dp; }
  int tp_size() const { return mesh->layout().degrees().tp; }
  int pp_rank() const { return mesh->coordinates().pp; }
  int pp_size() const { return mesh->layout().degrees().pp; }
  int ep_rank() const { return mesh->coordinates().ep; }
  int ep_size() const { return mesh->layout().degrees().ep; }
  parallel::Communicator& dp() const { return mesh->dp().comm(); }
  // The ranks that split the routed experts, and those that hold the same
  // experts (over which the experts' gradients are summed).
  parallel::Communicator& ep() const { return mesh->ep().comm(); }
  parallel::Communicator& expert_dp() const { return mesh->expert_dp().comm(); }
  parallel::Communicator& pp() const { return mesh->pp().comm(); }
  // The pipeline's two point-to-point channels over the pp group.
  parallel::pipeline::PipelineChannels pipeline_channels() const {
    return {&mesh->pp().comm(), &mesh->pp_gradients().comm()};
  }
};

// Collective over the world. `device` ("cpu" | "cuda") picks the MPI or the
// NCCL backend. Under ep > 1 the model's MoE blocks get the ep group. The kv replica group is built
// when tp exceeds the model's kv heads. Under pp the model learns its stage's chunks (the layers of
// parallel.pp_layers / pp_virtual, validated by ValidateParallelForModel)
// and the embedding group that sums tied embedding copies. Errors: degrees that do not match the
// world or the model (with the arithmetic), NCCL asked for but not built.
absl::StatusOr<ParallelRuntime> BuildParallelRuntime(const recipe::ParallelSection& parallel,
                                                     const std::string& device,
                                                     const models::ModelConfig& config,
                                                     const parallel::World& world);

}  // namespace fulcrum::loop
