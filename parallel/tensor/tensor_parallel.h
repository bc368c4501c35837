// TensorParallel: what a layer needs to know about its tp group, and the
// shard arithmetic of tensor-parallel weights.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel::tensor {

struct TensorParallel {
  Communicator* group = nullptr;   // the tp group; nullptr = no tensor parallelism
  bool sequence_parallel = false;  // activations between tp regions are sequence shards

  int rank() const { return group != nullptr ? group->rank() : 0; }
  int size() const { return group != nullptr ? group->size() : 1; }
  bool active() const { return size() > 1; }
};

// [start, start + length) of an n-long dimension held by `rank` of `size`
// equal shards (n divisible by size: checked).
struct ShardRange {
  int64_t start = 0;
  int64_t length = 0;
};
ShardRange EvenShard(int64_t n, int rank, int size);

// How a weight is laid out across the tp group.
enum class ShardKind {
  kReplicated,  // whole tensor on every rank
  kColumn,      // dim 0 of [out, in] (and a bias [out]) split evenly
  kRow,         // dim 1 of [out, in] split evenly
  kVocab,       // dim 0 of an embedding [vocab, hidden] split evenly
};

// The input of a column-parallel matmul: CopyToTpRegion(x), or under sequence
// parallelism GatherFromSpRegion(x) (x holds this rank's sequence shard).
torch::Tensor ColumnParallelInput(const torch::Tensor& x, const TensorParallel& tp);
// The output of a row-parallel matmul from this rank's partial sum:
// ReduceFromTpRegion, or ReduceScatterToSpRegion under sequence parallelism.
torch::Tensor RowParallelOutput(const torch::Tensor& partial, const TensorParallel& tp);

}  // namespace fulcrum::parallel::tensor
