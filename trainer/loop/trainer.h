// Trainer: the training loop of `fulcrum train`.
//
// One step: the loader yields this rank's micro-batches; each runs forward and
// backward with its loss summed over target tokens and divided by the target
// count of the whole global batch, so that accumulated and dp-summed gradients
// are exactly the gradient of the global mean loss (what one rank running the
// whole batch computes). Then partial gradients are summed over tp (sequence-
// parallel norms, replicated adapter halves, kv-head replicas), gradients are
// summed over dp by GradientBuckets (launched during the last micro-batch's
// backward when no tp sum has to come first; reduce-scattered under ZeRO-1),
// clipped by their global norm (each parameter element counted once over tp
// and dp), and AdamW (ZeRO-1: ShardedAdamW) steps with the scheduled rate.
//
// Under pp each rank holds its stage's chunks and the step's micro-batches
// run through the recipe's schedule (parallel/pipeline); the loss is the last
// stage's, summed to every rank, and the grad norm counts every stage.
//
// Under ep each MoE block holds its ep rank's routed experts and exchanges
// tokens with the other ep ranks (parallel/expert); the experts' gradients are
// summed over the expert-data-parallel group (ranks holding the same experts,
// by their own buckets, and with ZeRO-1 their own ShardedAdamW), everything
// else over dp; the grad norm counts the replicated part once and every
// expert once.
//
// Every group comes from the ParallelRuntime (parallel_setup.h): the model's
// tp layers, the buckets' dp group, the loader's dp rank. Checkpoints are
// sharded: each rank writes the parameter boxes, optimizer segments and
// generator it holds (checkpoint_state.h), and on resume reads the regions
// its own layout holds, so any layout resumes any checkpoint.
//
// MoE models: each training forward's routers add the recipe's balance loss
// (moe.aux_loss, moe.z_loss_coeff) to the objective, the mean over the
// step's micro-batches of all ranks (so the layouts agree), and count their
// experts' tokens; after the step the loads are summed over dp for the
// metrics and, with moe.bias_update_rate, DeepSeek-V3's correction biases
// move towards balance (checkpoints keep them).
//
// Non-finite steps: the gradient norm (global, the same on every rank) is
// read before the update; when it is NaN or inf, train.on_nonfinite decides:
// abort returns an error before anything changes, skip drops the update
// (parameters, optimizer state and correction biases unchanged; the data
// and the learning-rate schedule move on) and logs it.
//
// Preemption: after every step the ranks agree whether any received
// SIGTERM or SIGUSR1 (StopSignals); if so all save a checkpoint (when
// checkpoint.dir is set) and Run returns normally with the signal.
//
// Validation (train.eval_every > 0 and a data.validation split): every
// eval_every steps and after the last, the whole validation set runs forward
// without gradients, micro_batch rows at a time, its rows dealt round-robin
// over dp ranks; val_loss = (sum of target losses) / (targets), both summed
// over dp: the same normalisation as training. It goes to the console and,
// as {"step", "val_loss", "val_targets"}, to the metrics JSONL.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/dataset/loader.h"
#include "data/dataset/prefetching_loader.h"
#include "parallel/data_parallel/gradient_buckets.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/runtime/logger.h"
#include "parallel/runtime/world.h"
#include "trainer/loop/causal_lm_stage.h"
#include "trainer/loop/checkpoint_saver.h"
#include "trainer/loop/model_factory.h"
#include "trainer/loop/parallel_setup.h"
#include "trainer/loop/stop_signals.h"
#include "trainer/metrics/flops.h"
#include "trainer/metrics/step_metrics.h"
#include "trainer/models/moe_block.h"
#include "trainer/models/parallel_layout.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/optimizer.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

struct TrainingSummary {
  int64_t first_step = 0;  // steps already done when this run started (resume)
  int64_t last_step = 0;
  std::vector<double> losses;                          // one per step run here
  std::vector<std::pair<int64_t, double>> val_losses;  // (step, val_loss) per eval pass
  std::string last_checkpoint;
  int stop_signal = 0;  // > 0: stopped early by this signal (after saving)
};

class Trainer {
 public:
  // Builds the model, optimizer and loader for this rank; restores the state
  // named by checkpoint.resume.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const recipe::Recipe& recipe,
                                                         const parallel::World& world,
                                                         const parallel::Logger& logger);
  absl::StatusOr<TrainingSummary> Run();

 private:
  Trainer(const recipe::Recipe& recipe, const parallel::World& world,
          const parallel::Logger& logger)
      : recipe_(recipe), world_(world), logger_(logger), saver_(world, logger, recipe.checkpoint) {}

  absl::Status BuildParallel();
  absl::Status BuildModelAndOptimizer();
  absl::Status BuildPipeline();
  absl::Status BuildLoader();
  absl::Status Resume();
  // Runs one optimizer step; returns its metrics, or the train.on_nonfinite:
  // abort error (the same on every rank) before updating anything.
  absl::StatusOr<metrics::StepMetrics> Step(int64_t step_index);
  absl::Status SaveCheckpoint(int64_t completed_steps);
  // This rank's training state as checkpoint pieces (views of the live tensors).
  std::vector<checkpoint::LocalPiece> CheckpointPieces();
  // One all-reduce after every step: the largest stop signal any rank
  // received, and whether any rank's background checkpoint write runs.
  struct StepBoundary {
    int stop_signal = 0;
    bool any_rank_writing = false;
  };
  StepBoundary AgreeAtStepBoundary();
  // Forward and backward of the step's micro-batches (through the pipeline
  // schedule under pp); returns this rank's summed target loss.
  torch::Tensor ForwardBackward(const data::StepBatch& batch, double denominator);
  // Partial sums over tp, the dp reduction; returns the global grad norm
  // (the optimizer step applies the clip as it reads the gradients).
  torch::Tensor ReduceGradientsAndNorm();
  // MoE models, after the optimizer step: the step's expert loads and
  // balance losses summed over dp into `m`; DeepSeek-V3's bias update.
  void FinishMoeStep(metrics::StepMetrics& m);
  // The validation loss over the whole split (all dp ranks take part).
  double Evaluate();
  void RecordEval(int64_t step, double val_loss);

  recipe::Recipe recipe_;
  const parallel::World& world_;
  const parallel::Logger& logger_;
  torch::Device device_ = torch::kCPU;
  metrics::PhaseTimer timer_;  // this step's time by phase
  ParallelRuntime parallel_;
  BuiltModel built_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::vector<torch::Tensor> trainable_;
  std::vector<models::ParamLayout> trainable_layouts_;  // parallel to trainable_
  std::vector<models::MoeBlockImpl*> moe_blocks_;       // layer order; empty for dense models
  std::vector<int64_t> moe_layers_;                     // their layer indices in the whole model
  std::unique_ptr<parallel::GradientBuckets> buckets_;  // over dp
  // Under ep > 1: the routed experts' gradients, summed over the expert-data-
  // parallel group; they are trainable_[num_dense_trainable_..] (the dense
  // ones, in buckets_, come first).
  std::unique_ptr<parallel::GradientBuckets> expert_buckets_;
  size_t num_dense_trainable_ = 0;
  bool overlap_dp_reduction_ = false;  // no tp partial sums to run before it
  // Under pp: this rank's chunks and the schedule that runs them.
  std::unique_ptr<CausalLmStage> stage_;
  std::unique_ptr<parallel::pipeline::PipelineExecutor> pipeline_;
  std::unique_ptr<data::PrefetchingLoader> loader_;
  std::vector<data::Row> validation_rows_;  // all of them, [seq_len] each; every rank holds all
  int64_t validation_targets_ = 0;          // over all validation rows
  std::unique_ptr<metrics::MetricsSink> sink_;
  int64_t start_step_ = 0;
  int64_t skipped_steps_ = 0;  // train.on_nonfinite: skip, in this run
  StopSignals stop_signals_;
  CheckpointSaver saver_;
  double flops_per_token_ = 0.0;
  double peak_flops_ = 0.0;
};

}  // namespace fulcrum::loop
