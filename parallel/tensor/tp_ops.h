// The conjugate autograd functions of tensor and sequence parallelism
// (Megatron-LM's mappings). Each is identity when the group has one rank.
//
//   forward                              backward
//   CopyToTpRegion        identity              all-reduce
//   ReduceFromTpRegion    all-reduce            identity
//   GatherFromTpRegion    all-gather last dim   keep own last-dim chunk
//   ScatterToTpRegion     keep own last-dim chunk  all-gather last dim
//   ScatterToSpRegion     keep own seq chunk    all-gather seq
//   GatherFromSpRegion    all-gather seq        reduce-scatter seq
//   ReduceScatterToSpRegion  reduce-scatter seq all-gather seq
//   GatherSpToReplicated  all-gather seq        keep own seq chunk
//
// Activations are [B, T, ...]; the sequence dim is 1 and must divide by the
// group size under sequence parallelism (validated from the recipe).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <utility>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel::tensor {

inline constexpr int64_t kSeqDim = 1;

torch::Tensor CopyToTpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor ReduceFromTpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor GatherFromTpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor ScatterToTpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor ScatterToSpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor GatherFromSpRegion(const torch::Tensor& x, Communicator& tp);
torch::Tensor ReduceScatterToSpRegion(const torch::Tensor& x, Communicator& tp);
// For consumers that run replicated on the full sequence (MoE routers, the
// latent projections of MLA): their gradient is complete and the same on
// every rank, so backward keeps this rank's chunk instead of summing.
torch::Tensor GatherSpToReplicated(const torch::Tensor& x, Communicator& tp);

// Without autograd (no_grad paths, gathering weights for export):
// all-gather of `x` along `dim` over the group, rank order.
torch::Tensor AllGatherAlongDim(const torch::Tensor& x, int64_t dim, Communicator& comm);

// The same launched now and finished later, so that other work runs while
// it travels (a backward computing gradients meanwhile). Wait() (once)
// returns the result; a group of one rank launches nothing.
class PendingAlongDim {
 public:
  // work: the launched collective, or null; finish: the result from its
  // output, called after the work completes.
  PendingAlongDim(WorkHandle work, std::function<torch::Tensor()> finish)
      : work_(std::move(work)), finish_(std::move(finish)) {}
  torch::Tensor Wait();

 private:
  WorkHandle work_;
  std::function<torch::Tensor()> finish_;
};
PendingAlongDim AllGatherAlongDimAsync(const torch::Tensor& x, int64_t dim, Communicator& comm);
// x [.., n, ..] (n = size * c along `dim`) -> [.., c, ..]: rank r gets the
// group's sum of chunk r.
PendingAlongDim ReduceScatterAlongDimAsync(const torch::Tensor& x, int64_t dim, Communicator& comm);

}  // namespace fulcrum::parallel::tensor
