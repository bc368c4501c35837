// PipelineExecutor: runs one stage's actions of a Schedule for one step.
//
// The executor owns the pipeline mechanics and nothing of the model: it
// posts receives into pooled buffers (receive_buffer_pool.h), turns a received activation into a
// leaf that requires grad, calls the stage's model for each forward, keeps each (micro-batch,
// chunk)'s input and output until its backward, runs the backward (whole, or split:
// split_backward.h), sends the results, and releases what is done. The model is reached through
// StageModel.
//
// Shapes: every micro-batch's activation shape comes from StageModel, which
// knows it locally (every stage holds the micro-batch's token ids, so
// [micro_batch, seq_len, hidden] — under sequence parallelism the rank's
// sequence shard — needs no message). Variable shapes would need a small
// header message per micro-batch before each activation; packed batches
// never do.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "parallel/comm/communicator.h"
#include "parallel/pipeline/receive_buffer_pool.h"
#include "parallel/pipeline/schedule.h"

namespace fulcrum::parallel::pipeline {

// The model side of one stage (implemented by the trainer).
class StageModel {
 public:
  virtual ~StageModel() = default;
  // Forward of `micro_batch` through local chunk `chunk`. `input` is the
  // received activation (a leaf that requires grad) or undefined on the
  // first virtual stage (the chunk reads the micro-batch's token ids).
  // Returns the activation for the next virtual stage or, on the last virtual
  // stage, the micro-batch's loss as scaled for the step (a differentiable
  // 0-dim tensor whose backward gives the step's gradient contribution).
  virtual torch::Tensor Forward(int chunk, int micro_batch, const torch::Tensor& input) = 0;
  // The shape of the activation entering `chunk` for `micro_batch` (what its
  // receive buffer and its incoming gradient look like).
  virtual std::vector<int64_t> ActivationShape(int chunk, int micro_batch) const = 0;
  // dtype and device of activations and their gradients.
  virtual torch::TensorOptions ActivationOptions() const = 0;
  // The chunk's trainable parameters (the zero-bubble weight phase).
  virtual std::vector<torch::Tensor> ChunkParameters(int chunk) const = 0;
  // Zero-bubble on the first virtual stage, which sends no input gradient:
  // a tensor of `micro_batch`'s forward through `chunk` (e.g. the embedding
  // output, requiring grad) down to which the input phase runs, so that the
  // weight phase holds only the weight gradients, as on the other stages.
  // The model hands it over once (and drops its reference). Undefined (the
  // default): the first virtual stage's whole backward is its weight phase.
  virtual torch::Tensor TakeSplitPoint(int chunk, int micro_batch) { return torch::Tensor(); }
};

// Point-to-point over the pp group (group rank = stage index): activations
// and gradients on separate communicators, so that each channel's messages
// match in order (schedule.h).
struct PipelineChannels {
  Communicator* activations = nullptr;
  Communicator* gradients = nullptr;
};

// Seconds since the start of Run().
struct ActionTiming {
  Action action;
  double start = 0.0;
  double end = 0.0;
};

struct PipelineStepResult {
  // Last virtual stage's chunk: the detached 0-dim losses, by micro-batch
  // (empty on stages without the last virtual stage).
  std::vector<torch::Tensor> losses;
  std::vector<ActionTiming> timings;  // compute actions, when recorded
  double step_seconds = 0.0;
  int max_in_flight = 0;  // most (micro-batch, chunk) activations held at once
};

class PipelineExecutor {
 public:
  // `schedule` must be valid (SimulateSchedule passes); `stage` is this
  // rank's pp index.
  PipelineExecutor(Schedule schedule, int stage, PipelineChannels channels,
                   bool record_timings = false);

  // Runs this stage's actions. Collective over the pp group: every stage runs
  // its list of the same schedule. All sends are complete on return;
  // gradients are accumulated into the parameters' .grad.
  PipelineStepResult Run(StageModel& model);

  const Schedule& schedule() const { return schedule_; }

 private:
  Schedule schedule_;
  int stage_;
  PipelineChannels channels_;
  bool record_timings_;
  ReceiveBufferPool receive_buffers_;  // kept across steps
};

}  // namespace fulcrum::parallel::pipeline
