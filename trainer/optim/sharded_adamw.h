// ShardedAdamW: ZeRO-1 AdamW. Each dp rank keeps the fp32 master weights and
// moments of only its chunk of every gradient bucket (the OwnedSegments of
// reduce-scatter GradientBuckets), updates that chunk from the reduced
// gradients, writes it into the parameters and all-gathers the rest.
//
// The optimizer state per rank is ~1/dp of AdamW's (up to bucket padding);
// the maths is AdamW's (AdamWUpdate), so dp ranks reproduce one rank.
//
//   GradientBuckets buckets(tensors, dp, {bytes, GradReduction::kReduceScatter});
//   ShardedAdamW opt(params, buckets, dp, options);
//   ... backward, buckets.FinishReduction();
//   opt.Step(lr, ClipCoefficient(norm, max_norm));  // also AllGatherParameters
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/comm/communicator.h"
#include "parallel/data_parallel/gradient_buckets.h"
#include "trainer/optim/adamw_update.h"
#include "trainer/optim/optimizer.h"

namespace fulcrum::optim {

class ShardedAdamW : public Optimizer {
 public:
  // params: in the SAME order as the tensors given to `buckets` (reduce-
  // scatter mode over `dp`; all-reduce buckets work too, unsharded). Both
  // must outlive the optimizer.
  ShardedAdamW(std::vector<NamedParameter> params, parallel::GradientBuckets& buckets,
               parallel::Communicator& dp, AdamWOptions options);

  // Updates this rank's segments from the reduced bucket grads (call after
  // buckets.FinishReduction()), then all-gathers the parameters.
  // Collective over dp.
  void Step(double lr, float grad_scale) override;
  const std::vector<NamedParameter>& parameters() const override { return params_; }
  int64_t step_count() const override { return step_; }
  // Full tensors as AdamW's StateDict (collective over dp: all-gathers).
  std::vector<checkpoint::NamedTensor> StateDict() override;
  // Full tensors; keeps this rank's segments. Validated before any change.
  absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& state) override;
  std::vector<LocalStateShard> LocalState() override;
  void RestoreStepCount(int64_t step) override;
  int64_t state_bytes() const override;

 private:
  // The full tensors of one state kind ("exp_avg", ...), gathered over dp.
  std::vector<torch::Tensor> GatherFull(const std::vector<torch::Tensor>& segments);

  std::vector<NamedParameter> params_;
  parallel::GradientBuckets& buckets_;
  parallel::Communicator& dp_;
  AdamWOptions options_;
  int64_t step_ = 0;
  std::vector<parallel::GradientBuckets::OwnedSegment> owned_;
  // Parallel to owned_, each [segment numel] fp32.
  std::vector<torch::Tensor> master_;  // a view of the param when it is fp32
  std::vector<torch::Tensor> exp_avg_;
  std::vector<torch::Tensor> exp_avg_sq_;
};

}  // namespace fulcrum::optim
