// Tensor-parallel layers. Parameter names are those of the unsharded layer
// ("weight", "bias"), holding this rank's shard, so that a module path plus a
// name is still the Hugging Face key and a loader narrows the HF tensor.
//
//   ColumnParallelLinear  W [out/tp, in], b [out/tp]: y_r = x W_r^T + b_r,
//                         output sharded on the last dim (or gathered)
//   RowParallelLinear     W [out, in/tp], b [out] replicated: the input is
//                         sharded on the last dim; y = sum_r x_r W_r^T + b
//   VocabParallelEmbedding  E [vocab/tp, hidden]: rows outside the shard give
//                         0, then all-reduce (reduce-scatter under sp)
// (The loss of vocab-sharded logits: vocab_parallel_cross_entropy.h.)
//
// trainer/lora's LoraLinear takes the same ColumnParallelInput /
// RowParallelOutput mappings (tensor_parallel.h) so adapters shard the same way.
#pragma once

#include <torch/torch.h>

#include "parallel/tensor/tensor_parallel.h"

namespace fulcrum::parallel::tensor {

class ColumnParallelLinearImpl : public torch::nn::Module {
 public:
  // Full sizes; this rank allocates its [out/tp, in] shard (uninitialised).
  ColumnParallelLinearImpl(int64_t in_features, int64_t out_features, bool bias, bool gather_output,
                           const TensorParallel& tp, const torch::TensorOptions& options);
  // x [B, T, in] (under sp [B, T/tp, in]) -> [B, T, out/tp] ([B, T, out] when gather_output)
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // [out/tp, in]
  torch::Tensor bias;    // [out/tp] or undefined

 private:
  bool gather_output_;
  TensorParallel tp_;
};
TORCH_MODULE(ColumnParallelLinear);

class RowParallelLinearImpl : public torch::nn::Module {
 public:
  RowParallelLinearImpl(int64_t in_features, int64_t out_features, bool bias,
                        const TensorParallel& tp, const torch::TensorOptions& options);
  // x [B, T, in/tp] -> [B, T, out] (under sp [B, T/tp, out])
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // [out, in/tp]
  // NOTE: under sequence parallelism each rank's bias gradient covers only its
  // sequence shard: sum it with AllReducePartialGradients (partial_gradients.h).
  torch::Tensor bias;  // [out] (replicated) or undefined

 private:
  TensorParallel tp_;
};
TORCH_MODULE(RowParallelLinear);

class VocabParallelEmbeddingImpl : public torch::nn::Module {
 public:
  VocabParallelEmbeddingImpl(int64_t vocab_size, int64_t hidden_size, const TensorParallel& tp,
                             const torch::TensorOptions& options);
  // ids [B, T] int64 -> [B, T, hidden] (under sp [B, T/tp, hidden])
  torch::Tensor forward(const torch::Tensor& ids);
  int64_t vocab_start() const { return vocab_start_; }
  torch::Tensor weight;  // [vocab/tp, hidden]

 private:
  int64_t vocab_start_;
  TensorParallel tp_;
};
TORCH_MODULE(VocabParallelEmbedding);

// Embedding lookup against a vocab shard: ids outside [vocab_start,
// vocab_start + shard rows) give zero rows; then all-reduce (reduce-scatter
// to sequence shards under sp). The function VocabParallelEmbedding uses,
// exposed for a tied lm_head / embedding that lives elsewhere.
torch::Tensor VocabParallelLookup(const torch::Tensor& ids, const torch::Tensor& weight_shard,
                                  int64_t vocab_start, const TensorParallel& tp);

}  // namespace fulcrum::parallel::tensor
