// What a model needs to know about tensor parallelism: the tp group (with
// sequence parallelism) and, when tp exceeds the kv head count, the group of
// tp ranks that hold the same kv head.
#pragma once

#include <string>
#include <vector>

#include "parallel/comm/communicator.h"
#include "parallel/pipeline/stage_partition.h"
#include "parallel/tensor/tensor_parallel.h"
#include "trainer/lora/lora_linear.h"

namespace fulcrum::models {

struct ModelParallel {
  parallel::tensor::TensorParallel tp;  // tp group (nullptr = none) + sequence_parallel
  // The tp ranks sharing one kv head when tp > n_kv_heads (tp / n_kv adjacent
  // ranks: DeviceMesh::KvReplicaGroup(tp / n_kv)); else nullptr.
  parallel::Communicator* kv_replicas = nullptr;
  // This pipeline stage's chunks (StagePartition::ChunksOf), chunk 0 first;
  // empty = the whole model (no pipeline parallelism).
  std::vector<parallel::pipeline::StageChunk> pipeline_chunks;
  // DeviceMesh::embedding(): the first and the last stage, which hold copies
  // of a tied embedding; nullptr without pp.
  parallel::Communicator* embedding_group = nullptr;
  // DeviceMesh::ep(): the ranks that split each MoE layer's routed experts
  // (ep of them, inside dp); nullptr (or one rank) = every expert here.
  parallel::Communicator* expert_parallel = nullptr;

  bool pipelined() const { return !pipeline_chunks.empty(); }
  // Whether this rank holds virtual stage 0 (the token embedding) / the last
  // virtual stage (final norm, lm_head, loss). Both true without pp.
  bool HoldsFirst() const;
  bool HoldsLast() const;
  // Whether a module path of the whole model ("model.layers.5.mlp.up_proj",
  // "lm_head") lives on another pipeline stage. False without pp.
  bool HeldByOtherStage(const std::string& module_path) const;
  bool expert_sharded() const { return expert_parallel != nullptr && expert_parallel->size() > 1; }
};

// How this rank's attention heads sit in the tp group.
struct HeadShard {
  int64_t num_heads = 0;      // query heads on this rank (H / tp)
  int64_t num_kv_heads = 0;   // kv heads on this rank (n_kv / tp, or 1 when replicated)
  int64_t first_kv_head = 0;  // index of this rank's first kv head in the full model
  int kv_replicas = 1;        // tp ranks holding each of this rank's kv heads
};

// Requires H % tp == 0 and (n_kv % tp == 0 or tp % n_kv == 0) (FULCRUM_CHECK:
// the recipe validation reports these to the user). With replication, rank r
// holds kv head r / (tp / n_kv): its query heads r*H/tp .. (r+1)*H/tp - 1 are
// exactly the ones HF's repeat_kv maps to that kv head (h / (H / n_kv)).
HeadShard ShardHeads(int64_t num_heads, int64_t num_kv_heads,
                     const parallel::tensor::TensorParallel& tp);

// The LoraLinear role of the projection `module_name` ("q_proj", "down_proj",
// "lm_head"), from family_registry's ProjectionSplit.
lora::LinearParallel ProjectionParallel(const std::string& module_name,
                                        const ModelParallel& parallel);

}  // namespace fulcrum::models
