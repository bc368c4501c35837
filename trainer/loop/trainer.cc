#include "trainer/loop/trainer.h"

#include <torch/csrc/autograd/profiler_legacy.h>

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/loop/checkpoint_state.h"
#include "trainer/loop/forward_inputs.h"
#include "trainer/metrics/device_memory.h"
#include "trainer/metrics/memory.h"
#include "trainer/models/loss.h"
#include "trainer/models/moe_balance.h"
#include "trainer/optim/grad_clip.h"
#include "trainer/optim/lr_schedule.h"

namespace fulcrum::loop {
namespace {

optim::ScheduleOptions ScheduleFrom(const recipe::ScheduleSection& section) {
  optim::ScheduleOptions options;
  options.type = section.type;
  options.warmup_steps = section.warmup_steps;
  options.min_lr_ratio = section.min_lr_ratio;
  return options;
}
}  // namespace

absl::Status Trainer::Resume() {
  if (recipe_.checkpoint.resume.empty()) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  // Each rank reads the regions its own layout holds, whatever the saving
  // layout was; every rank must succeed before any trains.
  std::unique_ptr<checkpoint::ShardedCheckpointReader> reader;
  const absl::Status status = [&]() -> absl::Status {
    FULCRUM_ASSIGN_OR_RETURN(
        const std::string dir,
        checkpoint::ResolveCheckpoint(recipe_.checkpoint.dir, recipe_.checkpoint.resume));
    FULCRUM_ASSIGN_OR_RETURN(reader, checkpoint::ShardedCheckpointReader::Open(dir));
    const LayoutIndex layouts = IndexLayouts(optimizer_->parameters(), trainable_layouts_);
    return RestoreTrainingState(*reader, layouts, *optimizer_, *built_.model, world_.rank());
  }();
  FULCRUM_RETURN_IF_ERROR(world_.AgreeOn(status));
  const checkpoint::CheckpointHeader& loaded = reader->metadata().header;
  loader_->SetStep(loaded.data_step);
  start_step_ = loaded.step;
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  logger_.Info(absl::StrFormat(
      "resumed from %s at step %d: read %.1f MiB for the %.1f MiB this rank holds in %.2f s",
      reader->dir(), start_step_, reader->bytes_read() / 1048576.0,
      reader->bytes_needed() / 1048576.0, elapsed.count()));
  return absl::OkStatus();
}

absl::StatusOr<metrics::StepMetrics> Trainer::Step(int64_t step_index) {
  const auto start = std::chrono::steady_clock::now();
  built_.model->train();
  timer_.Take();  // time outside steps (evaluation, checkpoints) is not the step's
  metrics::ResetDevicePeak(device_);
  const data::StepBatch batch = [&] {
    const auto measured = timer_.Measure(metrics::StepPhase::kDataWait);
    return loader_->Next();
  }();
  const double denominator = static_cast<double>(std::max<int64_t>(1, batch.global_num_targets));
  torch::Tensor loss_sum = ForwardBackward(batch, denominator);
  const torch::Tensor grad_norm = ReduceGradientsAndNorm();
  const double lr = optim::LearningRate(ScheduleFrom(recipe_.schedule), recipe_.optim.lr,
                                        step_index, recipe_.train.steps);
  // A host synchronisation before the update: every rank holds the same
  // global norm, so every rank takes the same branch.
  const double norm = grad_norm.item<double>();
  const bool finite = std::isfinite(norm);
  if (!finite && recipe_.train.on_nonfinite == "abort") {
    return absl::DataLossError(absl::StrFormat(
        "step %d: the gradient norm is %f (a non-finite loss or gradient); "
        "train.on_nonfinite: abort stops before this update, so the last checkpoint stays the "
        "latest state (train.on_nonfinite: skip drops such steps instead)",
        step_index + 1, norm));
  }
  {
    const auto measured = timer_.Measure(metrics::StepPhase::kOptimizer);
    if (finite) {
      optimizer_->Step(lr,
                       optim::ClipCoefficient(static_cast<float>(norm), recipe_.optim.grad_clip));
    } else {
      ++skipped_steps_;
    }
    buckets_->ReleaseGrads();
    if (expert_buckets_) expert_buckets_->ReleaseGrads();
  }

  // The step's one host synchronisation: loss and norm for the logs. Every
  // tp rank holds the same loss; the dp ranks hold parts of it; under pp the
  // last stage holds it and the others zero.
  double loss = 0.0;
  {
    const auto measured = timer_.Measure(metrics::StepPhase::kCommWait);
    parallel_.dp().AllReduce(loss_sum);
    if (pipeline_) parallel_.pp().AllReduce(loss_sum);
    loss = loss_sum.item<double>();
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

  metrics::StepMetrics m;
  m.step = step_index + 1;
  m.total_steps = recipe_.train.steps;
  m.loss = loss / denominator;
  m.lr = lr;
  m.grad_norm = norm;
  m.skipped = !finite;
  m.skipped_steps = skipped_steps_;
  m.tokens = recipe_.batch.global_batch * recipe_.batch.seq_len;
  m.step_seconds = elapsed.count();
  m.times = timer_.Take();
  m.tokens_per_second = static_cast<double>(m.tokens) / m.step_seconds;
  m.tokens_per_second_per_rank = m.tokens_per_second / world_.size();
  m.flops_per_second_per_rank = m.tokens_per_second_per_rank * flops_per_token_;
  m.peak_flops_per_rank = peak_flops_;
  m.mfu = peak_flops_ > 0 ? m.flops_per_second_per_rank / peak_flops_ : 0.0;
  const metrics::MemoryUsage memory = metrics::CurrentMemoryUsage();
  m.rss_bytes = memory.rss_bytes;
  m.peak_rss_bytes = memory.peak_rss_bytes;
  m.peak_host_tensor_bytes = memory.peak_host_tensor_bytes;
  m.peak_host_reserved_bytes = memory.peak_host_reserved_bytes;
  const metrics::DeviceMemoryUsage device_memory = metrics::CurrentDeviceMemory(device_);
  m.device_bytes = device_memory.allocated_bytes;
  m.peak_device_bytes = device_memory.peak_allocated_bytes;
  m.reserved_device_bytes = device_memory.reserved_bytes;
  m.optimizer_state_bytes = optimizer_->state_bytes();
  FinishMoeStep(m);
  return m;
}

void Trainer::FinishMoeStep(metrics::StepMetrics& m) {
  if (!built_.config.moe.enabled()) return;
  // One reduction for every layer: [loads of layer 0, ..., balance sums,
  // dropped choices].
  std::vector<torch::Tensor> parts;
  std::vector<torch::Tensor> sums;
  std::vector<torch::Tensor> dropped;
  for (models::MoeBlockImpl* block : moe_blocks_) {
    models::MoeBlockImpl::StepStats stats = block->TakeStepStats();
    parts.push_back(stats.loads);
    sums.push_back(stats.balance_loss_sum.reshape({1}));
    dropped.push_back(stats.dropped.reshape({1}));
  }
  parts.insert(parts.end(), sums.begin(), sums.end());
  parts.insert(parts.end(), dropped.begin(), dropped.end());
  torch::Tensor all = parts.empty() ? torch::zeros({0}, torch::kDouble) : torch::cat(parts);
  parallel_.dp().AllReduce(all);
  // Per layer of the whole model (a stage fills its own; summed over pp):
  // max/mean load, the balance losses' sum in slot num_layers, then the
  // dropped choices per layer.
  const int64_t num_layers = built_.config.num_layers;
  const int64_t blocks = static_cast<int64_t>(moe_blocks_.size());
  torch::Tensor per_layer = torch::zeros({2 * num_layers + 1}, torch::kDouble);
  int64_t offset = 0;
  for (size_t b = 0; b < moe_blocks_.size(); ++b) {
    models::MoeBlockImpl* block = moe_blocks_[b];
    const torch::Tensor loads = all.narrow(0, offset, block->num_experts());
    offset += block->num_experts();
    const double mean = loads.mean().item<double>();
    per_layer[moe_layers_[b]] = mean > 0 ? loads.max().item<double>() / mean : 0.0;
    if (recipe_.moe.bias_update_rate > 0 && !m.skipped) {
      models::UpdateCorrectionBias(block->gate->e_score_correction_bias, loads,
                                   recipe_.moe.bias_update_rate);
    }
  }
  per_layer[num_layers] = all.narrow(0, offset, blocks).sum();
  for (int64_t b = 0; b < blocks; ++b) {
    per_layer[num_layers + 1 + moe_layers_[static_cast<size_t>(b)]] = all[offset + blocks + b];
  }
  if (pipeline_) parallel_.pp().AllReduce(per_layer);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    if (models::IsMoeLayer(built_.config, layer)) {
      m.expert_load_max_over_mean.push_back(per_layer[layer].item<double>());
      m.moe_tokens_dropped.push_back(per_layer[num_layers + 1 + layer].item<int64_t>());
    }
  }
  m.moe_balance_loss = per_layer[num_layers].item<double>() *
                       static_cast<double>(recipe_.batch.micro_batch) /
                       static_cast<double>(recipe_.batch.global_batch);
}

torch::Tensor Trainer::ForwardBackward(const data::StepBatch& batch, double denominator) {
  if (pipeline_) {
    stage_->SetBatch(batch.micro_batches, denominator);
    // Each parameter of this stage accumulates once per micro-batch; a
    // bucket's reduction starts when its chunk's last backward completes it.
    if (overlap_dp_reduction_) {
      buckets_->ArmForLastBackward(static_cast<int>(batch.micro_batches.size()));
    }
    const parallel::pipeline::PipelineStepResult result = pipeline_->Run(*stage_);
    double compute = 0.0;
    for (const parallel::pipeline::ActionTiming& t : result.timings) {
      const bool forward = t.action.type == parallel::pipeline::ActionType::kForward;
      timer_.Add(forward ? metrics::StepPhase::kForward : metrics::StepPhase::kBackward,
                 t.end - t.start);
      compute += t.end - t.start;
    }
    timer_.Add(metrics::StepPhase::kCommWait, std::max(0.0, result.step_seconds - compute));
    return stage_->loss_sum().clone();
  }
  torch::Tensor loss_sum =
      torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device_));
  for (const data::MicroBatch& micro : batch.micro_batches) {
    const models::ForwardInputs inputs = ForwardInputsOn(micro, device_);
    if (overlap_dp_reduction_ && &micro == &batch.micro_batches.back()) {
      buckets_->ArmForLastBackward();
    }
    torch::Tensor micro_loss;
    {
      const auto measured = timer_.Measure(metrics::StepPhase::kForward);
      micro_loss = models::HeadLossSum(
          *built_.model, built_.model->ForwardHidden(inputs),
          micro.labels.to(torch::TensorOptions().device(device_), /*non_blocking=*/true));
    }
    {
      const auto measured = timer_.Measure(metrics::StepPhase::kBackward);
      (micro_loss / denominator).backward();
    }
    loss_sum += micro_loss.detach();
  }
  return loss_sum;
}

torch::Tensor Trainer::ReduceGradientsAndNorm() {
  {
    const auto measured = timer_.Measure(metrics::StepPhase::kCommWait);
    models::SyncPartialGradients(*built_.model);
    buckets_->FinishReduction();
    if (expert_buckets_) expert_buckets_->FinishReduction();
  }
  const auto measured = timer_.Measure(metrics::StepPhase::kOptimizer);  // the norm
  // Each element counted once: over tp by the layout's rule; over dp by the
  // ZeRO-1 owner (all-reduced gradients are the same on every dp rank; an
  // expert's chunk has one owner among the expert-dp ranks holding it, and
  // the dp group holds every ep rank's experts once).
  std::vector<torch::Tensor> counted;
  std::vector<parallel::Communicator*> sum_over;
  if (parallel_.tp_size() > 1) sum_over.push_back(&parallel_.mesh->tp().comm());
  if (parallel_.pp_size() > 1) sum_over.push_back(&parallel_.pp());
  if (recipe_.parallel.zero == 1 && parallel_.dp_size() > 1) {
    sum_over.push_back(&parallel_.dp());
    auto add_owned = [&](const parallel::GradientBuckets& buckets, size_t first_param) {
      for (const auto& owned : buckets.OwnedSegments()) {
        const parallel::BucketSegment& segment = owned.segment;
        torch::Tensor grad =
            buckets.BucketGrads(owned.bucket).narrow(0, segment.bucket_offset, segment.numel);
        if (trainable_layouts_[first_param + segment.param_index].counted_in_norm) {
          counted.push_back(grad);
        }
      }
    };
    add_owned(*buckets_, 0);
    if (expert_buckets_) add_owned(*expert_buckets_, num_dense_trainable_);
  } else {
    // Under ep the replicated part is counted on the first ep rank, each
    // rank's experts on it, and the squares summed over the ep group.
    const bool ep = parallel_.ep_size() > 1;
    if (ep) sum_over.push_back(&parallel_.ep());
    for (size_t i = 0; i < trainable_.size(); ++i) {
      const torch::Tensor& grad = trainable_[i].grad();
      if (!grad.defined()) continue;
      const bool counted_here = !ep || i >= num_dense_trainable_ || parallel_.ep_rank() == 0;
      if (trainable_layouts_[i].counted_in_norm && counted_here) counted.push_back(grad);
    }
  }
  return optim::GlobalGradNorm(counted, sum_over);
}

absl::Status Trainer::SaveCheckpoint(int64_t completed_steps) {
  checkpoint::CheckpointHeader header;
  header.step = completed_steps;
  header.data_step = loader_->step();
  header.optimizer_step = optimizer_->step_count();
  header.world_size = world_.size();
  header.mesh = {{"dp", parallel_.dp_size()},
                 {"tp", parallel_.tp_size()},
                 {"pp", parallel_.pp_size()},
                 {"ep", parallel_.ep_size()},
                 {"zero", recipe_.parallel.zero}};
  header.recipe_yaml = recipe::RecipeToYaml(recipe_);
  return saver_.Save(header, CheckpointPieces());
}

std::vector<checkpoint::LocalPiece> Trainer::CheckpointPieces() {
  // Each rank writes what it holds; a piece several ranks hold is written once.
  const LayoutIndex layouts = IndexLayouts(optimizer_->parameters(), trainable_layouts_);
  return TrainingStatePieces(layouts, *optimizer_, *built_.model, world_.rank(),
                             parallel_.pp_rank());
}

Trainer::StepBoundary Trainer::AgreeAtStepBoundary() {
  torch::Tensor state =
      torch::tensor({stop_signals_.received(), saver_.writing() ? 1 : 0}, torch::kInt).to(device_);
  if (world_.size() > 1) parallel_.mesh->world().comm().AllReduce(state, parallel::ReduceOp::kMax);
  state = state.to(torch::kCPU);
  return {state[0].item<int>(), state[1].item<int>() != 0};
}

absl::StatusOr<TrainingSummary> Trainer::Run() {
  TrainingSummary summary;
  summary.first_step = start_step_;
  const int64_t total = recipe_.train.steps;
  const int64_t every = recipe_.checkpoint.every;
  logger_.Info(absl::StrFormat(
      "training steps %d..%d of %d: global batch %d x %d tokens, %d "
      "micro-batches of %d per rank, %d rank(s)",
      start_step_ + 1, total, total, recipe_.batch.global_batch, recipe_.batch.seq_len,
      recipe::GradAccumulationSteps(recipe_.batch, parallel_.dp_size()), recipe_.batch.micro_batch,
      world_.size()));
  // FULCRUM_PROFILE=trace.json: a chrome trace of this run's fourth step
  // (after warm-up), for finding where a step's time goes.
  const char* profile_path = std::getenv("FULCRUM_PROFILE");
  for (int64_t step = start_step_; step < total; ++step) {
    std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
    if (profile_path != nullptr && step == start_step_ + 3 && world_.is_root()) {
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(profile_path);
    }
    FULCRUM_ASSIGN_OR_RETURN(const metrics::StepMetrics m, Step(step));
    profile.reset();
    summary.losses.push_back(m.loss);
    summary.last_step = m.step;
    if (sink_) sink_->Record(m);
    const int64_t eval_every = recipe_.train.eval_every;
    if (eval_every > 0 && !validation_rows_.empty() &&
        (m.step % eval_every == 0 || m.step == total)) {
      const double val_loss = Evaluate();
      summary.val_losses.emplace_back(m.step, val_loss);
      RecordEval(m.step, val_loss);
    }
    const bool due = every > 0 ? m.step % every == 0 : false;
    const StepBoundary boundary = AgreeAtStepBoundary();
    if (!boundary.any_rank_writing) FULCRUM_RETURN_IF_ERROR(saver_.FinishPending());
    summary.stop_signal = boundary.stop_signal;
    const bool stopping = summary.stop_signal > 0 && m.step < total;
    if (!recipe_.checkpoint.dir.empty() && (due || m.step == total || stopping)) {
      FULCRUM_RETURN_IF_ERROR(SaveCheckpoint(m.step));
    } else if (!recipe_.checkpoint.dir.empty() && recipe_.checkpoint.async &&
               !saver_.buffers_prepared()) {
      // After a step the optimizer state exists: the pieces have their shapes.
      saver_.PrepareBuffers(CheckpointPieces());
    }
    if (stopping) {
      logger_.Warn(absl::StrFormat(
          "stopping after step %d of %d: signal %d (%s) received; %s", m.step, total,
          summary.stop_signal, strsignal(summary.stop_signal),
          recipe_.checkpoint.dir.empty() ? "no checkpoint.dir is set, so nothing was saved"
                                         : "resume with checkpoint.resume=latest"));
      break;
    }
  }
  FULCRUM_RETURN_IF_ERROR(saver_.FinishPending());
  summary.last_checkpoint = saver_.last_checkpoint();
  return summary;
}

}  // namespace fulcrum::loop
