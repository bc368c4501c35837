#include "parallel/tensor/parallel_layers.h"

#include <cstdint>

#include "core/check.h"
#include "parallel/tensor/tp_ops.h"

namespace fulcrum::parallel::tensor {
namespace {

// Labels equal to this are not targets (as models::kIgnoreIndex; parallel/
// does not include trainer/).
constexpr int64_t kIgnoreIndex = -100;

}  // namespace

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

// Composed from ReduceFromTpRegion, so autograd gives the gradient
// (softmax - onehot restricted to this shard) without a custom backward:
//   m      = max over the whole vocabulary (detached; the loss does not depend on it)
//   s      = sum_v exp(l_v - m)          all-reduced (ReduceFromTpRegion)
//   l_t-m  = target logit from the rank holding it, 0 elsewhere, all-reduced
//   loss   = log(s) - (l_t - m) = logsumexp(l) - l_t
// Memory: [N, V/tp] fp32 copies of the shard, never [N, V].
torch::Tensor VocabParallelCrossEntropySum(const torch::Tensor& logits_shard,
                                           const torch::Tensor& labels, int64_t vocab_start,
                                           const TensorParallel& tp) {
  FULCRUM_CHECK(logits_shard.dim() == 3 && labels.dim() == 2 &&
                    logits_shard.size(0) == labels.size(0) &&
                    logits_shard.size(1) == labels.size(1),
                "logits dims ", logits_shard.dim(), " vs labels dims ", labels.dim(),
                " (need [B, T, V/tp] and [B, T] with equal B and T)");
  const int64_t t = logits_shard.size(1), v_shard = logits_shard.size(2);
  if (t < 2 || logits_shard.size(0) == 0) {
    return logits_shard.sum().to(torch::kFloat) * 0;  // no targets; keeps the graph
  }
  // [N, V/tp] fp32 and [N] int64 with N = B * (T - 1): logits[:, t] predicts labels[:, t+1].
  const torch::Tensor logits =
      logits_shard.narrow(1, 0, t - 1).to(torch::kFloat).reshape({-1, v_shard});
  const torch::Tensor targets =
      labels.narrow(1, 1, t - 1).to(logits.device(), torch::kLong).reshape({-1});

  torch::Tensor row_max = std::get<0>(logits.detach().max(1)).contiguous();  // [N]
  if (tp.active()) tp.group->AllReduce(row_max, ReduceOp::kMax);
  const torch::Tensor shifted = logits - row_max.unsqueeze(1);  // [N, V/tp]

  torch::Tensor sum_exp = shifted.exp().sum(1);  // [N]
  if (tp.active()) sum_exp = ReduceFromTpRegion(sum_exp, *tp.group);

  const torch::Tensor valid = targets.ne(kIgnoreIndex);                             // [N]
  const torch::Tensor local = targets - vocab_start;                                // [N]
  const torch::Tensor here = valid.logical_and(local.ge(0)).logical_and(local.lt(v_shard));
  const torch::Tensor index = local.masked_fill(here.logical_not(), 0).unsqueeze(1);  // [N, 1]
  torch::Tensor target_logit =
      shifted.gather(1, index).squeeze(1).masked_fill(here.logical_not(), 0);  // [N]
  if (tp.active()) target_logit = ReduceFromTpRegion(target_logit, *tp.group);

  return (sum_exp.log() - target_logit).masked_fill(valid.logical_not(), 0).sum();
}

}  // namespace fulcrum::parallel::tensor
