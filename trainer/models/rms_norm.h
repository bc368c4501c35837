// RMSNorm as HF Llama/Qwen compute it: statistics in fp32, the normalised
// activations cast back to the input dtype before the weight multiplies them.
#pragma once

#include <torch/torch.h>

#include "parallel/tensor/tensor_parallel.h"

namespace fulcrum::models {

// weight * (x * rstd) in x's dtype, with rstd [..., 1] the fp32 1/rms of x's
// rows: RMSNorm's output, the same ops whenever it is computed, so values
// computed again in backward are bitwise those of forward.
torch::Tensor RmsNormValues(const torch::Tensor& x, const torch::Tensor& rstd,
                            const torch::Tensor& weight);

// An RMSNorm's output and what computes it again: the projections reading it
// (lora/normed_linear.h) keep x and rstd, which the norm keeps for its own
// backward anyway, instead of one more [N, dim] tensor each.
struct RmsNormOutput {
  torch::Tensor y;       // the output (autograd's), RmsNormValues(x, rstd, weight)
  torch::Tensor x;       // undefined: y cannot be computed again (consumers keep it)
  torch::Tensor rstd;    // [..., 1] fp32, no autograd history
  torch::Tensor weight;  // the norm's weight

  // Any tensor, as an output its consumers keep.
  static RmsNormOutput OutputOnly(const torch::Tensor& y) { return {y, {}, {}, {}}; }

  // For column-parallel consumers: y copied into the tp region (gathered
  // under sp) by ColumnParallelInput, x and rstd as they are. Under sp y then
  // no longer matches x in size, and ForwardNormed keeps y.
  RmsNormOutput InTpRegion(const parallel::tensor::TensorParallel& tp) const {
    return {parallel::tensor::ColumnParallelInput(y, tp), x, rstd, weight};
  }
};

class RMSNormImpl : public torch::nn::Module {
 public:
  // weight [dim], created uninitialised with `options`.
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  // x [..., dim] -> [..., dim] in x's dtype (x's dtype times the weight's).
  torch::Tensor forward(const torch::Tensor& x);
  // forward(x) with what computes it again. Keeps x and rstd for backward
  // in every recompute mode (the selective region would keep x and recompute
  // rstd: [N] floats less, and an output its consumers must keep).
  RmsNormOutput ForwardRecomputable(const torch::Tensor& x);
  // true (train.recompute: selective): training forwards keep only x for
  // backward and recompute the fp32 statistics and the normalised
  // activations there (recompute.h).
  void SetRecompute(bool recompute) { recompute_ = recompute; }

  torch::Tensor weight;  // [dim]

 private:
  torch::Tensor Normalize(const torch::Tensor& x);

  double eps_;
  bool recompute_ = false;
};
TORCH_MODULE(RMSNorm);

}  // namespace fulcrum::models
