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

}  // namespace fulcrum::parallel::tensor
