#include "parallel/tensor/parallel_layers.h"

#include <cstdint>

#include "core/check.h"
#include "parallel/tensor/tp_ops.h"

namespace fulcrum::parallel::tensor {

ColumnParallelLinearImpl::ColumnParallelLinearImpl(int64_t in_features, int64_t out_features,
                                                   bool bias, bool gather_output,
                                                   const TensorParallel& tp,
                                                   const torch::TensorOptions& options)
    : gather_output_(gather_output), tp_(tp) {
  const ShardRange out = EvenShard(out_features, tp.rank(), tp.size());
  weight = register_parameter("weight", torch::empty({out.length, in_features}, options));
  if (bias) this->bias = register_parameter("bias", torch::empty({out.length}, options));
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& x) {
  // [B, T, in] (gathered from [B, T/tp, in] under sp) -> [B, T, out/tp]
  const torch::Tensor y = torch::linear(ColumnParallelInput(x, tp_), weight, bias);
  if (!gather_output_ || !tp_.active()) return y;
  return GatherFromTpRegion(y, *tp_.group);
}

RowParallelLinearImpl::RowParallelLinearImpl(int64_t in_features, int64_t out_features, bool bias,
                                             const TensorParallel& tp,
                                             const torch::TensorOptions& options)
    : tp_(tp) {
  const ShardRange in = EvenShard(in_features, tp.rank(), tp.size());
  weight = register_parameter("weight", torch::empty({out_features, in.length}, options));
  if (bias) this->bias = register_parameter("bias", torch::empty({out_features}, options));
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& x) {
  // The bias is added once, after the reduction. NOTE: under sp its gradient
  // is partial per rank (each saw only its sequence shard): sum it with
  // AllReducePartialGradients.
  torch::Tensor y = RowParallelOutput(torch::linear(x, weight), tp_);
  if (bias.defined()) y = y + bias;
  return y;
}

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(int64_t vocab_size, int64_t hidden_size,
                                                       const TensorParallel& tp,
                                                       const torch::TensorOptions& options)
    : tp_(tp) {
  const ShardRange rows = EvenShard(vocab_size, tp.rank(), tp.size());
  vocab_start_ = rows.start;
  weight = register_parameter("weight", torch::empty({rows.length, hidden_size}, options));
}

torch::Tensor VocabParallelEmbeddingImpl::forward(const torch::Tensor& ids) {
  return VocabParallelLookup(ids, weight, vocab_start_, tp_);
}

torch::Tensor VocabParallelLookup(const torch::Tensor& ids, const torch::Tensor& weight_shard,
                                  int64_t vocab_start, const TensorParallel& tp) {
  FULCRUM_CHECK(weight_shard.dim() == 2, "embedding shard has ", weight_shard.dim(),
                " dims, need [vocab/tp, hidden]");
  if (!tp.active()) return torch::embedding(weight_shard, ids - vocab_start);
  const int64_t rows = weight_shard.size(0);
  // ids [B, T] -> outside [B, T] bool: tokens another rank's shard holds.
  const torch::Tensor outside = ids.lt(vocab_start).logical_or(ids.ge(vocab_start + rows));
  const torch::Tensor local_ids = (ids - vocab_start).masked_fill(outside, 0);
  // [B, T, hidden], zero where another rank holds the row.
  const torch::Tensor partial =
      torch::embedding(weight_shard, local_ids).masked_fill(outside.unsqueeze(-1), 0);
  return RowParallelOutput(partial, tp);
}

}  // namespace fulcrum::parallel::tensor
