// The causal-LM cross entropy of vocab-sharded logits (the lm_head under tp),
// never gathering the full vocabulary, in chunks of rows like
// models::CrossEntropySum: a pass for each row's local max and sum of
// exponentials, two all-reduces ([N] max, then the [2, N] sums and target
// logits), and a pass that writes the gradient, kept instead of the logits.
// The backward is one multiply and no collective.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "parallel/tensor/tensor_parallel.h"

namespace fulcrum::parallel::tensor {

// logits_shard [B, T, V/tp] (any float dtype, computed in fp32),
// vocab_start this rank's first vocab id, labels [B, T] int64 unshifted
// (logits[:, t] predicts labels[:, t+1]; -100 ignored). Returns the 0-dim
// fp32 sum of per-target losses, identical on every tp rank,
// differentiable w.r.t. logits_shard. Equals models::CrossEntropySum of the
// gathered logits.
torch::Tensor VocabParallelCrossEntropySum(const torch::Tensor& logits_shard,
                                           const torch::Tensor& labels, int64_t vocab_start,
                                           const TensorParallel& tp);

// labels [B, T] (any integer dtype) -> targets [B*T] int64 on `device`:
// labels shifted left by one with -100 in each sequence's last position, so
// that row t of the [B*T, V] logits (a view of [B, T, V]) predicts
// labels[:, t+1].
torch::Tensor ShiftedTargets(const torch::Tensor& labels, const torch::Device& device);

// The rows of VocabParallelCrossEntropySum, for callers that compute the
// logits a chunk of rows at a time (models::LinearCrossEntropySum under tp):
// logits [N, V/tp] (this rank's vocab columns from vocab_start), targets
// [N] int64 (-100 ignored). Writes each row's loss into row_loss [N] fp32 (0
// where ignored) and, when `grad` is defined ([N, V/tp], logits' dtype),
// this rank's columns of d(sum of row losses)/d(logits). Collective over
// `group` (two all-reduces of [N] and [2, N]; none when null): every rank
// calls it with the same N.
void ShardCrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets,
                       int64_t vocab_start, Communicator* group, torch::Tensor& row_loss,
                       torch::Tensor& grad);

}  // namespace fulcrum::parallel::tensor
