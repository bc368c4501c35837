// Causal-LM cross entropy as HF computes it: logits[:, t] predicts
// labels[:, t+1]; labels == -100 are ignored; fp32.
#pragma once

#include <torch/torch.h>

#include "parallel/tensor/tensor_parallel.h"

namespace fulcrum::models {

inline constexpr int64_t kIgnoreIndex = -100;

// logits [B, T, V], labels [B, T] int64 (unshifted) -> 0-dim fp32 sum of the
// per-target losses (a sum so that micro-batches and ranks add up exactly).
torch::Tensor CrossEntropySum(const torch::Tensor& logits, const torch::Tensor& labels);
// Host count of labels[:, 1:] != -100 (syncs with the device once).
int64_t CountTargets(const torch::Tensor& labels);
// HF's mean loss over the shifted targets, 0-dim fp32 (no host sync).
torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels);

// The rows of logits LinearCrossEntropySum computes at a time, of n, for a
// weight of `vocab` rows: more where the weight's gradient is computed too
// (models/loss.cc).
int64_t HeadChunkRows(int64_t n, int64_t vocab, bool cuda, bool weight_trains);
// [rows, vocab] buffers a pass of LinearCrossEntropySum holds when it
// computes gradients: the logits and their gradient, or one where the CPU
// kernel writes the gradient over fp32 logits (no tp vocab split).
int HeadChunkBuffers(bool cuda, bool fp32, bool vocab_split);

// The vocabulary an output projection's weight covers: all of it, or under
// tp this rank's even shard, rows [start, start + weight rows).
struct HeadVocab {
  int64_t start = 0;
  parallel::tensor::TensorParallel tp;  // inactive: the weight holds the whole vocabulary
};

// CrossEntropySum(linear(hidden, weight).to(fp32), labels) without the
// [N, V] logits: rows of the logits are computed a chunk at a time, and the
// gradients of hidden and weight with them (kept until backward instead of
// the logits and their gradient; the weight's in fp32 across chunks).
// hidden [B, T, H] and weight [V, H] in one dtype, labels [B, T] unshifted.
// Under tp (vocab.tp active) weight is this rank's vocab shard and hidden the
// whole sequence inside the tp region (ColumnParallelInput, whose backward
// sums the shards' partial gradients): each pass's rows go through
// parallel::tensor::ShardCrossEntropy (two all-reduces over tp per pass), and
// the result equals VocabParallelCrossEntropySum of the shard's logits, the
// same on every tp rank. Collective over tp then.
torch::Tensor LinearCrossEntropySum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& labels, const HeadVocab& vocab = {});

}  // namespace fulcrum::models
