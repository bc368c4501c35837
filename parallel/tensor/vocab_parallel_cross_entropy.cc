#include "parallel/tensor/vocab_parallel_cross_entropy.h"

#include <algorithm>

#include "core/check.h"

namespace fulcrum::parallel::tensor {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Labels equal to this are not targets (as models::kIgnoreIndex; parallel/
// does not include trainer/).
constexpr int64_t kIgnoreIndex = -100;

// Rows per chunk as in models/loss.cc: on the CPU a chunk's fp32 copy stays
// in the cache across the ops made over it; on CUDA a chunk is a launch per
// op, so chunks are large.
constexpr int64_t kCpuChunkBytes = int64_t{1} << 20;
constexpr int64_t kCudaChunkBytes = int64_t{256} << 20;

}  // namespace

void ShardCrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets,
                       int64_t vocab_start, Communicator* group, torch::Tensor& row_loss,
                       torch::Tensor& grad) {
  const int64_t n = logits.size(0), v = logits.size(1);
  const bool fp32 = logits.scalar_type() == torch::kFloat;
  const int64_t chunk_bytes = logits.is_cuda() ? kCudaChunkBytes : kCpuChunkBytes;
  const int64_t rows = std::max<int64_t>(1, chunk_bytes / (v * 4));
  const auto fp32_options = logits.options().dtype(torch::kFloat);
  torch::Tensor scratch = torch::empty({std::min(rows, n), v}, fp32_options);
  const auto chunk_fp32 = [&](int64_t start, int64_t len) {
    const torch::Tensor x = logits.narrow(0, start, len);
    return fp32 ? x : scratch.narrow(0, 0, len).copy_(x);
  };

  // Each row's max and sum of exp(x - max) over this rank's columns.
  torch::Tensor local_max = torch::empty({n}, fp32_options);
  torch::Tensor local_sum = torch::empty({n}, fp32_options);
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const torch::Tensor x = chunk_fp32(start, len);
    torch::Tensor m = local_max.narrow(0, start, len);
    at::amax_out(m, x, {1});
    torch::Tensor e = scratch.narrow(0, 0, len);
    at::sub_out(e, x, m.unsqueeze(1)).exp_();
    torch::Tensor sum = local_sum.narrow(0, start, len);
    at::sum_out(sum, e, {1});
  }
  torch::Tensor row_max = local_max.clone();
  if (group != nullptr) group->AllReduce(row_max, ReduceOp::kMax);

  // [0] sum of exp(x - row max) over the vocabulary, [1] the target's
  // x - row max from the rank holding it (0 elsewhere): one all-reduce.
  const torch::Tensor local = targets - vocab_start;
  const torch::Tensor valid = targets.ne(kIgnoreIndex);
  const torch::Tensor here = valid.logical_and(local.ge(0)).logical_and(local.lt(v));
  const torch::Tensor index = local.masked_fill(here.logical_not(), 0).unsqueeze(1);  // [N, 1]
  torch::Tensor sums = torch::empty({2, n}, fp32_options);
  torch::Tensor sum_exp = sums[0], target_logit = sums[1];
  at::mul_out(sum_exp, local_sum, (local_max - row_max).exp_());
  target_logit.copy_(torch::where(here,
                                  logits.gather(1, index).squeeze(1).to(torch::kFloat) - row_max,
                                  torch::zeros({}, fp32_options)));
  if (group != nullptr) group->AllReduce(sums, ReduceOp::kSum);
  const torch::Tensor zero = torch::zeros({}, row_loss.options());
  row_loss.copy_(torch::where(valid, sum_exp.log() - target_logit, zero));
  if (!grad.defined()) return;

  // Per row: valid / sum, and -valid at the target column where it is here.
  const torch::Tensor scale = valid.to(torch::kFloat).div_(sum_exp).unsqueeze(1);  // [N, 1]
  const torch::Tensor minus_one = here.to(torch::kFloat).neg_().unsqueeze(1);      // [N, 1]
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const torch::Tensor x = chunk_fp32(start, len);
    torch::Tensor probs = fp32 ? grad.narrow(0, start, len) : scratch.narrow(0, 0, len);
    at::sub_out(probs, x, row_max.narrow(0, start, len).unsqueeze(1))
        .exp_()
        .mul_(scale.narrow(0, start, len));
    probs.scatter_add_(1, index.narrow(0, start, len), minus_one.narrow(0, start, len));
    if (!fp32) grad.narrow(0, start, len).copy_(probs);
  }
}

namespace {

// The gradient is computed during the forward and kept instead of the
// logits, so the backward is one multiply, in place, with no collective.
class VocabParallelCrossEntropyFunction
    : public torch::autograd::Function<VocabParallelCrossEntropyFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, int64_t vocab_start,
                               Communicator* group) {
    torch::Tensor row_loss = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat));
    torch::Tensor grad = torch::empty_like(logits, torch::MemoryFormat::Contiguous);
    ShardCrossEntropy(logits, targets, vocab_start, group, row_loss, grad);
    ctx->saved_data["grad"] = grad;
    return row_loss.sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    torch::Tensor grad = ctx->saved_data["grad"].toTensor();
    // Scaled in place and handed on: a second backward through this node
    // (retain_graph) would see it consumed.
    FULCRUM_CHECK(grad.defined(), "cross entropy: backward ran twice through one forward");
    ctx->saved_data["grad"] = torch::Tensor();
    grad.mul_(grad_outputs[0]);
    return {grad, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ShiftedTargets(const torch::Tensor& labels, const torch::Device& device) {
  const torch::Tensor long_labels = labels.to(device, torch::kLong);
  const int64_t t = labels.size(1);
  return torch::cat({long_labels.narrow(1, 1, t - 1),
                     torch::full({labels.size(0), 1}, kIgnoreIndex, long_labels.options())},
                    1)
      .reshape({-1});
}

torch::Tensor VocabParallelCrossEntropySum(const torch::Tensor& logits_shard,
                                           const torch::Tensor& labels, int64_t vocab_start,
                                           const TensorParallel& tp) {
  FULCRUM_CHECK(logits_shard.dim() == 3 && labels.dim() == 2 &&
                    logits_shard.size(0) == labels.size(0) &&
                    logits_shard.size(1) == labels.size(1),
                "logits dims ", logits_shard.dim(), " vs labels dims ", labels.dim(),
                " (need [B, T, V/tp] and [B, T] with equal B and T)");
  const int64_t b = logits_shard.size(0), t = logits_shard.size(1), v = logits_shard.size(2);
  if (t < 2 || b == 0) {
    return logits_shard.sum().to(torch::kFloat) * 0;  // no targets; keeps the graph
  }
  const torch::Tensor flat = logits_shard.reshape({-1, v});
  const torch::Tensor targets = ShiftedTargets(labels, logits_shard.device());
  Communicator* group = tp.active() ? tp.group : nullptr;
  if (torch::GradMode::is_enabled() && logits_shard.requires_grad()) {
    return VocabParallelCrossEntropyFunction::apply(flat, targets, vocab_start, group);
  }
  torch::Tensor row_loss = torch::empty({flat.size(0)}, flat.options().dtype(torch::kFloat));
  torch::Tensor no_grad;
  ShardCrossEntropy(flat, targets, vocab_start, group, row_loss, no_grad);
  return row_loss.sum();
}

}  // namespace fulcrum::parallel::tensor
