#include "trainer/loop/parallel_setup.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "parallel/pipeline/stage_partition.h"

namespace fulcrum::loop {

absl::StatusOr<ParallelRuntime> BuildParallelRuntime(const recipe::ParallelSection& parallel,
                                                     const std::string& device,
                                                     const models::ModelConfig& config,
                                                     const parallel::World& world) {
  parallel::MeshDegrees degrees;
  degrees.pp = static_cast<int>(parallel.pp);
  degrees.dp = static_cast<int>(parallel.dp);
  degrees.tp = static_cast<int>(parallel.tp);
  degrees.ep = static_cast<int>(parallel.ep);
  parallel::CommOptions options;
  options.timeout_seconds = parallel.comm_timeout_s;
  const parallel::CommBackend backend =
      device == "cuda" ? parallel::CommBackend::kNccl : parallel::CommBackend::kMpi;
  ParallelRuntime runtime;
  FULCRUM_ASSIGN_OR_RETURN(runtime.mesh,
                           parallel::DeviceMesh::Build(world, degrees, backend, options));
  if (degrees.tp > 1) {
    runtime.model.tp.group = &runtime.mesh->tp().comm();
    runtime.model.tp.sequence_parallel = parallel.sequence_parallel;
    if (config.num_kv_heads < degrees.tp) {
      // Validated: tp is a multiple of the kv heads; each kv head lives on
      // tp / n_kv adjacent tp ranks.
      const int replicas = degrees.tp / static_cast<int>(config.num_kv_heads);
      runtime.model.kv_replicas = &runtime.mesh->KvReplicaGroup(replicas).comm();
    }
  }
  if (degrees.ep > 1) runtime.model.expert_parallel = &runtime.mesh->ep().comm();
  if (degrees.pp > 1) {
    FULCRUM_ASSIGN_OR_RETURN(const parallel::pipeline::StagePartition partition,
                             parallel::pipeline::StagePartition::Create(
                                 config.num_layers, degrees.pp,
                                 static_cast<int>(parallel.pp_virtual), parallel.pp_layers));
    runtime.model.pipeline_chunks = partition.ChunksOf(runtime.pp_rank());
    runtime.model.embedding_group = &runtime.mesh->embedding().comm();
  }
  return runtime;
}

}  // namespace fulcrum::loop
