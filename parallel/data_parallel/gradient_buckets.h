// GradientBuckets: data-parallel gradient reduction, overlapped with backward.
//
// The trainable parameters are laid out, in reverse registration order (the
// order backward produces their gradients), in flat buckets of about
// `bucket_bytes`; each parameter's .grad is a view into its bucket, so
// accumulation across micro-batches writes the bucket directly. During the
// last micro-batch's backward a hook on every parameter's gradient
// accumulator counts the bucket's parameters down; when a bucket is complete
// its reduction is launched asynchronously while backward goes on.
//
//   all-reduce (zero 0): every rank ends with the dp sum of every gradient.
//   reduce-scatter (zero 1): each bucket is padded to a multiple of dp and
//   rank r ends with the dp sum of its chunk r of every bucket only (the
//   ZeRO-1 optimizer updates exactly that chunk, then AllGatherParameters).
//
// Gradients are summed, not averaged (the loss is already normalised by the
// global target count). Buckets hold the parameters' dtype; 16-bit buckets
// are reduced as the Communicator's CommOptions say.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel {

enum class GradReduction { kAllReduce, kReduceScatter };

struct BucketOptions {
  BucketOptions() = default;
  BucketOptions(int64_t bytes, GradReduction how, bool blocking_calls = false)
      : bucket_bytes(bytes), reduction(how), blocking(blocking_calls) {}
  int64_t bucket_bytes = int64_t{25} << 20;
  GradReduction reduction = GradReduction::kAllReduce;
  // Reduce each bucket with the blocking call when it becomes ready. For a
  // backend whose asynchronous collectives progress only inside later calls
  // (MPI on CPU) this overlaps just as much and is faster: Open MPI's blocking
  // all-reduce of 4 MiB takes a third of its non-blocking one's time.
  bool blocking = false;
};

// A run of one parameter's elements inside a bucket.
struct BucketSegment {
  size_t param_index = 0;     // into the params given to the constructor
  int64_t param_offset = 0;   // first element of the parameter (flattened)
  int64_t bucket_offset = 0;  // where that element sits in the bucket
  int64_t numel = 0;
};

class GradientBuckets {
 public:
  // params: trainable leaf tensors (requires_grad), contiguous. Their .grad
  // becomes a zeroed view into the buckets.
  GradientBuckets(std::vector<torch::Tensor> params, Communicator& dp, BucketOptions options);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // Call before the backward of a step's last micro-batch: its hooks launch
  // each bucket's reduction as soon as the bucket's gradients are final.
  // Earlier micro-batches only accumulate. `accumulations`: how often each
  // parameter's gradient still accumulates before it is final — 1 for the
  // last micro-batch's backward; the number of micro-batches when armed at
  // the start of a pipeline step, whose micro-batches' backwards interleave
  // with other chunks' (a parameter accumulating more often than that is a
  // broken invariant, checked).
  // NOTE: buckets launch in bucket order on every rank (their collectives
  // must match across ranks); a bucket whose parameters get no gradient
  // holds back the buckets after it until FinishReduction.
  void ArmForLastBackward(int accumulations = 1);
  // After that backward: launches buckets not launched yet (parameters
  // without a gradient this step) and waits for all. Without ArmForLastBackward
  // it reduces everything now (no overlap).
  void FinishReduction();
  // Zeroes the buckets (the .grad views stay).
  void ZeroGrads();
  // What ZeroGrads gives the next step, without a pass over the buckets: the
  // .grads become undefined, a parameter's first accumulation copies its
  // gradient into its view (instead of adding it to zeros) and makes the
  // view its .grad again, and FinishReduction zeroes the views of those that
  // got none. The .grads read before FinishReduction are not all views.
  // Saves the zeroing pass: 65-110 ms a step on the ~290M bench Llama (the
  // copy costs what the add into zeros did).
  void ReleaseGrads();

  // The segments of this rank's chunk of every bucket (reduce-scatter mode;
  // in all-reduce mode, every segment of every bucket), with the bucket index.
  struct OwnedSegment {
    size_t bucket = 0;
    BucketSegment segment;
  };
  std::vector<OwnedSegment> OwnedSegments() const;
  // The bucket's flat gradient buffer [padded numel] in the params' dtype.
  torch::Tensor BucketGrads(size_t bucket) const;
  size_t num_buckets() const;
  GradReduction reduction() const;

  // ZeRO-1, after the optimizer wrote its updated chunk into the parameters:
  // every rank's chunk of every bucket's parameter values is all-gathered
  // into every rank's parameters. The gradient buckets serve as the gather
  // buffers (no full-size copy is allocated) and are left zeroed.
  void AllGatherParameters();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fulcrum::parallel
