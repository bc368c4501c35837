// Causal-LM cross entropy as HF computes it: logits[:, t] predicts
// labels[:, t+1]; labels == -100 are ignored; fp32.
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

inline constexpr int64_t kIgnoreIndex = -100;

// logits [B, T, V], labels [B, T] int64 (unshifted) -> 0-dim fp32 sum of the
// per-target losses (a sum so that micro-batches and ranks add up exactly).
torch::Tensor CrossEntropySum(const torch::Tensor& logits, const torch::Tensor& labels);
// Host count of labels[:, 1:] != -100 (syncs with the device once).
int64_t CountTargets(const torch::Tensor& labels);
// HF's mean loss over the shifted targets, 0-dim fp32 (no host sync).
torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels);

// CrossEntropySum(linear(hidden, weight).to(fp32), labels) without the
// [N, V] logits: rows of the logits are computed a chunk at a time, and the
// gradients of hidden and weight with them (kept until backward instead of
// the logits and their gradient; the weight's in fp32 across chunks).
// hidden [B, T, H] and weight [V, H] in one dtype, labels [B, T] unshifted.
// The rows of logits LinearCrossEntropySum computes at a time, of n: more
// where the weight's gradient is computed too (models/loss.cc).
int64_t HeadChunkRows(int64_t n, int64_t vocab, bool cuda, bool weight_trains);
torch::Tensor LinearCrossEntropySum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& labels);

}  // namespace fulcrum::models
