#include "trainer/models/loss.h"

#include "core/check.h"

namespace fulcrum::models {
namespace {

struct ShiftedTargets {
  torch::Tensor logits;  // [B*(T-1), V] fp32
  torch::Tensor labels;  // [B*(T-1)] int64
};

ShiftedTargets Shift(const torch::Tensor& logits, const torch::Tensor& labels) {
  FULCRUM_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                    logits.size(1) == labels.size(1),
                "logits dims ", logits.dim(), " vs labels dims ", labels.dim(),
                " (need [B,T,V] and [B,T])");
  const int64_t t = logits.size(1), v = logits.size(2);
  return ShiftedTargets{logits.narrow(1, 0, t - 1).to(torch::kFloat).reshape({-1, v}),
                        labels.narrow(1, 1, t - 1).to(logits.device(), torch::kLong).reshape({-1})};
}

torch::Tensor CrossEntropy(const torch::Tensor& logits, const torch::Tensor& labels,
                           torch::nn::functional::CrossEntropyFuncOptions::reduction_t reduction) {
  const ShiftedTargets s = Shift(logits, labels);
  return torch::nn::functional::cross_entropy(s.logits, s.labels,
                                              torch::nn::functional::CrossEntropyFuncOptions()
                                                  .ignore_index(kIgnoreIndex)
                                                  .reduction(reduction));
}

}  // namespace

torch::Tensor CrossEntropySum(const torch::Tensor& logits, const torch::Tensor& labels) {
  return CrossEntropy(logits, labels, torch::kSum);
}

int64_t CountTargets(const torch::Tensor& labels) {
  if (labels.size(1) < 2) return 0;
  return labels.narrow(1, 1, labels.size(1) - 1).ne(kIgnoreIndex).sum().item<int64_t>();
}

torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels) {
  return CrossEntropy(logits, labels, torch::kMean);
}

}  // namespace fulcrum::models
