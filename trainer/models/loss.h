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

}  // namespace fulcrum::models
