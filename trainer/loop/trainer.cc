#include "trainer/loop/trainer.h"

#include <torch/csrc/autograd/profiler_legacy.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"
#include "core/status.h"
#include "parallel/pipeline/forward_only.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/loop/checkpoint_state.h"
#include "trainer/loop/data_factory.h"
#include "trainer/loop/memory_check.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/metrics/device_memory.h"
#include "trainer/metrics/memory.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/loss.h"
#include "trainer/models/recompute.h"
#include "trainer/optim/grad_clip.h"
#include "trainer/optim/grouped_optimizer.h"
#include "trainer/optim/lr_schedule.h"
#include "trainer/optim/sharded_adamw.h"
#include "trainer/plan/step_time_model.h"

namespace fulcrum::loop {
namespace {

optim::ScheduleOptions ScheduleFrom(const recipe::ScheduleSection& section) {
  optim::ScheduleOptions options;
  options.type = section.type;
  options.warmup_steps = section.warmup_steps;
  options.min_lr_ratio = section.min_lr_ratio;
  return options;
}

optim::AdamWOptions AdamWFrom(const recipe::OptimSection& section) {
  optim::AdamWOptions options;
  options.beta1 = section.beta1;
  options.beta2 = section.beta2;
  options.eps = section.eps;
  options.weight_decay = section.weight_decay;
  return options;
}

// Page-locks a batch's tensors: copies from them to a GPU are asynchronous.
void PinBatch(data::StepBatch& batch) {
  for (data::MicroBatch& m : batch.micro_batches) {
    for (torch::Tensor* t :
         {&m.input_ids, &m.labels, &m.attention_mask, &m.position_ids, &m.document_ids}) {
      if (t->defined()) *t = t->pin_memory();
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const recipe::Recipe& recipe,
                                                         const parallel::World& world,
                                                         const parallel::Logger& logger) {
  std::unique_ptr<Trainer> trainer(new Trainer(recipe, world, logger));
  FULCRUM_ASSIGN_OR_RETURN(trainer->device_, world.DeviceFor(recipe.device));
  trainer->timer_ = metrics::PhaseTimer(trainer->device_);
  FULCRUM_RETURN_IF_ERROR(trainer->BuildParallel());
  FULCRUM_RETURN_IF_ERROR(trainer->BuildModelAndOptimizer());
  FULCRUM_RETURN_IF_ERROR(trainer->BuildPipeline());
  FULCRUM_RETURN_IF_ERROR(trainer->BuildLoader());
  FULCRUM_RETURN_IF_ERROR(trainer->Resume());
  // Model FLOPs from the config, as the planner counts them: a token visits
  // top-k of the routed experts; LoRA's frozen base costs no weight gradient.
  const metrics::FlopsModel flops_model = plan::FlopsModelFor(trainer->built_.config, recipe);
  trainer->flops_per_token_ = metrics::TrainingFlopsPerToken(flops_model, recipe.batch.seq_len);
  logger.Info(absl::StrFormat(
      "model FLOPs per token: %.4g G (matmul weights: %d trained, %d frozen; attention over %d "
      "tokens)",
      trainer->flops_per_token_ / 1e9, flops_model.trainable_matmul_params,
      flops_model.frozen_matmul_params, recipe.batch.seq_len));
  // MFU against the GEMM peak of the training's dtype: bf16 runs on tensor
  // cores on a GPU, and on CPUs with AVX512-BF16/AMX at 2x or more fp32's
  // rate (where bf16 is emulated its peak is low, and so is the MFU's base).
  const torch::ScalarType gemm_dtype = ParamDtype(recipe.precision);
  trainer->peak_flops_ = recipe.logging.peak_flops > 0
                             ? recipe.logging.peak_flops
                             : metrics::MeasureGemmFlops(trainer->device_, gemm_dtype);
  if (world.is_root() || recipe.logging.all_ranks) {
    FULCRUM_ASSIGN_OR_RETURN(
        trainer->sink_,
        metrics::MetricsSink::Create(recipe.logging.metrics_file,
                                     world.is_root() ? recipe.logging.tensorboard_dir : "", logger,
                                     recipe.logging.every));
  }
  return trainer;
}

absl::Status Trainer::BuildParallel() {
  FULCRUM_ASSIGN_OR_RETURN(const models::ModelConfig config, LoadRequestedConfig(recipe_.model));
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipeForModel(recipe_, config));
  // Before anything is allocated: a layout that cannot fit would only end in
  // the kernel's OOM killer, or a CUDA out-of-memory error in the first step.
  FULCRUM_RETURN_IF_ERROR(world_.AgreeOn(
      CheckLayoutFits(config, recipe_, device_,
                      AvailableMemoryPerRank(recipe_.train, device_, world_.local_size()))));
  FULCRUM_ASSIGN_OR_RETURN(parallel_,
                           BuildParallelRuntime(recipe_.parallel, recipe_.device, config, world_));
  if (world_.is_root()) {
    for (const std::string& warning : recipe::RecipeWarnings(recipe_)) logger_.Warn(warning);
  }
  const parallel::MeshDegrees& d = parallel_.mesh->layout().degrees();
  logger_.Info(absl::StrFormat("mesh: pp %d x dp %d x tp %d%s%s%s over %d rank(s)", d.pp, d.dp,
                               d.tp,
                               recipe_.parallel.sequence_parallel ? " (sequence parallel)" : "",
                               d.ep > 1 ? absl::StrCat(", experts over ep ", d.ep) : std::string(),
                               recipe_.parallel.zero == 1 ? ", ZeRO-1" : "", world_.size()));
  return absl::OkStatus();
}

absl::Status Trainer::BuildModelAndOptimizer() {
  // Same seed on every rank: random init and LoRA's A are identical across dp
  // (and tp shards are cut from the same full values).
  torch::manual_seed(recipe_.seed);
  ModelRequest request;
  request.path = recipe_.model.path;
  request.config = recipe_.model.config;
  request.dtype = ParamDtype(recipe_.precision);
  request.device = device_;
  request.seed = static_cast<uint64_t>(recipe_.seed);
  request.parallel = parallel_.model;
  request.load.skip_mtp_layers = recipe_.model.mtp_layers == "skip";
  FULCRUM_ASSIGN_OR_RETURN(built_, BuildModel(request));
  FULCRUM_RETURN_IF_ERROR(models::CheckSequenceLength(built_.config, recipe_.batch.seq_len));
  if (recipe_.finetune.method == "lora") {
    FULCRUM_ASSIGN_OR_RETURN(
        const int64_t adapted,
        lora::ApplyLora(*built_.model,
                        LoraOptionsFrom(recipe_.finetune.lora).WithSeed(recipe_.seed)));
    logger_.Info("LoRA: ", adapted, " adapted linear layers, rank ", recipe_.finetune.lora.rank);
  }
  FULCRUM_ASSIGN_OR_RETURN(const models::Recompute recompute,
                           models::ParseRecompute(recipe_.train.recompute));
  built_.model->SetRecompute(recompute);
  moe_blocks_ = models::MoeBlocks(*built_.model);
  for (int64_t layer = 0; layer < built_.config.num_layers; ++layer) {
    if (models::IsMoeLayer(built_.config, layer) &&
        !parallel_.model.HeldByOtherStage(absl::StrCat("model.layers.", layer))) {
      moe_layers_.push_back(layer);
    }
  }
  FULCRUM_CHECK(moe_layers_.size() == moe_blocks_.size(), moe_blocks_.size(),
                " MoE blocks for MoE layers ", moe_layers_.size(), " on this stage");
  if (!moe_blocks_.empty()) {
    models::MoeBalanceOptions balance;
    FULCRUM_ASSIGN_OR_RETURN(balance.aux_loss, models::ParseAuxLoss(recipe_.moe.aux_loss));
    balance.aux_loss_coeff = recipe_.moe.aux_loss_coeff;
    balance.z_loss_coeff = recipe_.moe.z_loss_coeff;
    balance.micro_batch_weight = static_cast<double>(recipe_.batch.micro_batch) /
                                 static_cast<double>(recipe_.batch.global_batch);
    for (models::MoeBlockImpl* block : moe_blocks_) {
      block->SetBalance(balance);
      block->SetCapacityFactor(recipe_.moe.capacity_factor);
    }
  }
  // Dropout streams differ per dp rank (a tp group shares its inputs);
  // everything above is already fixed.
  torch::manual_seed(recipe_.seed + 1 + parallel_.dp_rank());
  std::vector<optim::NamedParameter> params =
      optim::TrainableParameters(*built_.model, recipe_.optim.decay_norms_and_biases);
  std::map<std::string, models::ParamLayout> layouts;
  for (models::ParamLayout& layout : models::ParallelLayouts(*built_.model)) {
    layouts[layout.name] = std::move(layout);
  }
  // Under ep the routed experts go last, in buckets and an optimizer group
  // of their own (reduced over the ranks holding the same experts).
  const bool expert_parallel = parallel_.ep_size() > 1;
  std::vector<optim::NamedParameter> dense, experts;
  for (optim::NamedParameter& p : params) {
    (expert_parallel && layouts.at(p.name).routed_expert ? experts : dense).push_back(std::move(p));
  }
  num_dense_trainable_ = dense.size();
  int64_t trainable = 0;
  // The dp reduction overlaps the backward (under pp: the schedule's last
  // backward of each chunk) unless a gradient needs another sum first. Under
  // ep it waits for the backward's end too: the all-to-alls of the backward,
  // the dp and the expert-dp reductions are collectives on three groups whose
  // order must be the same on every rank.
  overlap_dp_reduction_ = !expert_parallel;
  for (const std::vector<optim::NamedParameter>* group : {&dense, &experts}) {
    for (const auto& p : *group) {
      trainable_.push_back(p.param);
      trainable_layouts_.push_back(layouts.at(p.name));
      if (trainable_layouts_.back().grad_sync != models::GradSync::kNone) {
        overlap_dp_reduction_ = false;
      }
      trainable += p.param.numel();
    }
  }
  int64_t total = 0;
  for (const auto& p : built_.model->parameters()) total += p.numel();
  logger_.Info(absl::StrFormat("model %s: %d parameters, %d trainable (%.2f%%)%s",
                               built_.config.architecture, total, trainable,
                               100.0 * static_cast<double>(trainable) / std::max<int64_t>(1, total),
                               expert_parallel ? " on this rank" : ""));
  parallel::BucketOptions buckets;
  buckets.bucket_bytes = static_cast<int64_t>(recipe_.parallel.bucket_mb * 1024 * 1024);
  const bool zero = recipe_.parallel.zero == 1 && parallel_.dp_size() > 1;
  buckets.reduction =
      zero ? parallel::GradReduction::kReduceScatter : parallel::GradReduction::kAllReduce;
  buckets.blocking = std::string(parallel_.dp().backend()) == "mpi";
  std::vector<torch::Tensor> dense_tensors(trainable_.begin(),
                                           trainable_.begin() + num_dense_trainable_);
  buckets_ = std::make_unique<parallel::GradientBuckets>(dense_tensors, parallel_.dp(), buckets);
  parallel::BucketOptions expert_options = buckets;
  if (parallel_.expert_dp().size() == 1) {
    expert_options.reduction = parallel::GradReduction::kAllReduce;
  }
  if (expert_parallel) {
    std::vector<torch::Tensor> expert_tensors(trainable_.begin() + num_dense_trainable_,
                                              trainable_.end());
    expert_buckets_ = std::make_unique<parallel::GradientBuckets>(
        expert_tensors, parallel_.expert_dp(), expert_options);
  }
  if (zero && expert_parallel) {
    std::vector<std::unique_ptr<optim::Optimizer>> groups;
    groups.push_back(std::make_unique<optim::ShardedAdamW>(
        std::move(dense), *buckets_, parallel_.dp(), AdamWFrom(recipe_.optim)));
    groups.push_back(std::make_unique<optim::ShardedAdamW>(
        std::move(experts), *expert_buckets_, parallel_.expert_dp(), AdamWFrom(recipe_.optim)));
    optimizer_ = std::make_unique<optim::GroupedOptimizer>(std::move(groups));
  } else if (zero) {
    optimizer_ = std::make_unique<optim::ShardedAdamW>(std::move(dense), *buckets_, parallel_.dp(),
                                                       AdamWFrom(recipe_.optim));
  } else {
    dense.insert(dense.end(), std::make_move_iterator(experts.begin()),
                 std::make_move_iterator(experts.end()));
    optimizer_ = std::make_unique<optim::AdamW>(std::move(dense), AdamWFrom(recipe_.optim));
  }
  logger_.Info(absl::StrFormat(
      "optimizer state: %.2f MiB on this rank%s", optimizer_->state_bytes() / 1048576.0,
      !zero ? std::string()
      : expert_parallel
          ? absl::StrCat(" (ZeRO-1 shards: dp ", parallel_.dp_size(), ", experts over expert-dp ",
                         parallel_.expert_dp().size(), ")")
          : absl::StrCat(" (ZeRO-1 shard, dp ", parallel_.dp_size(), ")")));
  return absl::OkStatus();
}

absl::Status Trainer::BuildPipeline() {
  if (parallel_.pp_size() == 1) return absl::OkStatus();
  FULCRUM_ASSIGN_OR_RETURN(const parallel::pipeline::ScheduleKind kind,
                           parallel::pipeline::ParseScheduleKind(recipe_.parallel.pp_schedule));
  parallel::pipeline::ScheduleShape shape;
  shape.stages = parallel_.pp_size();
  shape.virtual_stages = static_cast<int>(recipe_.parallel.pp_virtual);
  shape.micro_batches =
      static_cast<int>(recipe::GradAccumulationSteps(recipe_.batch, parallel_.dp_size()));
  FULCRUM_ASSIGN_OR_RETURN(parallel::pipeline::Schedule schedule,
                           parallel::pipeline::BuildSchedule(kind, shape));
  stage_ = std::make_unique<CausalLmStage>(*built_.model, parallel_.model.pipeline_chunks, device_);
  // Timings of the compute actions: the step's forward and backward time;
  // the rest of the schedule is waiting on sends, receives and the bubble.
  pipeline_ = std::make_unique<parallel::pipeline::PipelineExecutor>(
      std::move(schedule), parallel_.pp_rank(), parallel_.pipeline_channels(),
      /*record_timings=*/true);
  std::string layers;
  for (const auto& chunk : parallel_.model.pipeline_chunks) {
    absl::StrAppend(&layers, layers.empty() ? "" : ", ", chunk.layers.first, "-",
                    chunk.layers.first + chunk.layers.count - 1);
  }
  logger_.Info(absl::StrFormat("pipeline: %s, stage %d of %d, layers %s, %d micro-batches",
                               parallel::pipeline::ScheduleName(kind), parallel_.pp_rank(),
                               parallel_.pp_size(), layers, shape.micro_batches));
  return absl::OkStatus();
}

absl::Status Trainer::BuildLoader() {
  const bool text = recipe::UsesTextData(recipe_.data);
  if (text) {
    // Rank 0 tokenizes when the prepared cache is missing or stale; the
    // others wait here, then every rank maps the published cache.
    absl::Status prepared = absl::OkStatus();
    if (world_.is_root()) prepared = EnsurePreparedData(recipe_, logger_, true).status();
    FULCRUM_RETURN_IF_ERROR(world_.AgreeOn(prepared));
  }
  // Quiet: rank 0 has just said whether it prepared or reused the cache.
  const parallel::Logger quiet(/*rank=*/-1, /*all_ranks=*/false);
  FULCRUM_ASSIGN_OR_RETURN(TrainingData data,
                           BuildTrainingData(recipe_, built_.config.vocab_size, parallel_.dp_rank(),
                                             parallel_.dp_size(), quiet,
                                             /*allow_build=*/!text));
  // One step ahead on a background thread; on CUDA the batches are pinned so
  // that their copies to the device are asynchronous.
  data::PrefetchingLoader::Prepare pin;
  if (device_.is_cuda()) pin = PinBatch;
  loader_ = std::make_unique<data::PrefetchingLoader>(std::move(data.loader), std::move(pin));
  logger_.Info("data: ", data.description, ": ", loader_->rows_per_epoch(), " rows of ",
               recipe_.batch.seq_len, " tokens per epoch");
  if (recipe_.train.eval_every > 0 && !data.validation.empty()) {
    std::vector<int64_t> order(data.validation.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    validation_rows_ =
        data::BuildRows(data.validation, order, {recipe_.batch.seq_len, recipe_.data.pack});
    for (const data::Row& row : validation_rows_) validation_targets_ += data::CountTargets(row);
    logger_.Info("validation: ", data.validation.size(), " samples, ", validation_rows_.size(),
                 " rows, ", validation_targets_, " targets; eval every ", recipe_.train.eval_every,
                 " steps");
  } else if (recipe_.train.eval_every > 0) {
    logger_.Warn("train.eval_every is set but the validation split is empty: no eval");
  }
  return absl::OkStatus();
}

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
  const torch::Tensor grad_norm = ReduceAndClipGradients();
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
      optimizer_->Step(lr);
    } else {
      ++skipped_steps_;
    }
    buckets_->ZeroGrads();
    if (expert_buckets_) expert_buckets_->ZeroGrads();
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
    const auto on_device = [&](const torch::Tensor& t) {
      return t.to(torch::TensorOptions().device(device_), /*non_blocking=*/true);
    };
    models::ForwardInputs inputs;
    inputs.input_ids = on_device(micro.input_ids);
    inputs.attention_mask = on_device(micro.attention_mask);
    inputs.position_ids = on_device(micro.position_ids);
    inputs.document_ids = on_device(micro.document_ids);
    if (overlap_dp_reduction_ && &micro == &batch.micro_batches.back()) {
      buckets_->ArmForLastBackward();
    }
    torch::Tensor micro_loss;
    {
      const auto measured = timer_.Measure(metrics::StepPhase::kForward);
      const torch::Tensor logits = built_.model->forward(inputs);
      micro_loss = models::TrainingLossSum(*built_.model, logits, on_device(micro.labels));
    }
    {
      const auto measured = timer_.Measure(metrics::StepPhase::kBackward);
      (micro_loss / denominator).backward();
    }
    loss_sum += micro_loss.detach();
  }
  return loss_sum;
}

torch::Tensor Trainer::ReduceAndClipGradients() {
  {
    const auto measured = timer_.Measure(metrics::StepPhase::kCommWait);
    models::SyncPartialGradients(*built_.model);
    buckets_->FinishReduction();
    if (expert_buckets_) expert_buckets_->FinishReduction();
  }
  const auto measured = timer_.Measure(metrics::StepPhase::kOptimizer);  // clipping
  // Each element counted once: over tp by the layout's rule; over dp by the
  // ZeRO-1 owner (all-reduced gradients are the same on every dp rank; an
  // expert's chunk has one owner among the expert-dp ranks holding it, and
  // the dp group holds every ep rank's experts once).
  std::vector<torch::Tensor> counted, to_scale;
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
        to_scale.push_back(grad);
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
      to_scale.push_back(grad);
    }
  }
  return optim::ClipGradNormDistributed(counted, to_scale, recipe_.optim.grad_clip, sum_over);
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

namespace {

// Rows [begin, end) as one batch of [end - begin, seq_len] int64 tensors.
data::MicroBatch StackRows(const std::vector<data::Row>& rows, size_t begin, size_t end) {
  const int64_t n = static_cast<int64_t>(end - begin);
  const int64_t seq_len = static_cast<int64_t>(rows[begin].input_ids.size());
  auto stack = [&](std::vector<int64_t> data::Row::*field) {
    torch::Tensor t = torch::empty({n, seq_len}, torch::kLong);
    int64_t* out = t.data_ptr<int64_t>();
    for (size_t r = begin; r < end; ++r) {
      const std::vector<int64_t>& v = rows[r].*field;
      std::copy(v.begin(), v.end(), out + static_cast<int64_t>(r - begin) * seq_len);
    }
    return t;
  };
  data::MicroBatch batch;
  batch.input_ids = stack(&data::Row::input_ids);
  batch.labels = stack(&data::Row::labels);
  batch.attention_mask = stack(&data::Row::attention_mask);
  batch.position_ids = stack(&data::Row::position_ids);
  batch.document_ids = stack(&data::Row::document_ids);
  return batch;
}

}  // namespace

double Trainer::Evaluate() {
  torch::NoGradGuard no_grad;
  built_.model->eval();
  // dp rank r takes rows r, r + dp, r + 2 dp, ...; micro_batch of them per
  // forward (its tp group runs the same rows).
  std::vector<data::Row> mine;
  for (size_t i = static_cast<size_t>(parallel_.dp_rank()); i < validation_rows_.size();
       i += static_cast<size_t>(parallel_.dp_size())) {
    mine.push_back(validation_rows_[i]);
  }
  const size_t micro = static_cast<size_t>(recipe_.batch.micro_batch);
  torch::Tensor loss_sum = torch::zeros({}, torch::kDouble);
  if (pipeline_) {
    std::vector<data::MicroBatch> batches;
    for (size_t begin = 0; begin < mine.size(); begin += micro) {
      batches.push_back(StackRows(mine, begin, std::min(mine.size(), begin + micro)));
    }
    stage_->SetBatch(batches, 1.0);
    parallel::pipeline::ScheduleShape shape = pipeline_->schedule().shape;
    shape.micro_batches = static_cast<int>(batches.size());
    parallel::pipeline::RunForwardOnly(*stage_, shape, parallel_.pp_rank(), parallel_.pp());
    loss_sum += stage_->loss_sum().to(torch::kCPU, torch::kDouble);
    parallel_.pp().AllReduce(loss_sum);
  }
  // Under ep every rank of an ep group joins every forward's all-to-alls: a
  // rank with fewer rows runs the missing forwards on a row without targets.
  size_t forwards = (mine.size() + micro - 1) / micro;
  if (parallel_.ep_size() > 1) {
    const size_t dp = static_cast<size_t>(parallel_.dp_size());
    forwards = ((validation_rows_.size() + dp - 1) / dp + micro - 1) / micro;
  }
  for (size_t f = 0; f < forwards && !pipeline_; ++f) {
    const size_t begin = f * micro;
    data::MicroBatch batch;
    if (begin < mine.size()) {
      batch = StackRows(mine, begin, std::min(mine.size(), begin + micro));
    } else {
      batch = StackRows(validation_rows_, 0, 1);
      batch.labels.fill_(-100);
    }
    models::ForwardInputs inputs;
    inputs.input_ids = batch.input_ids.to(device_);
    inputs.attention_mask = batch.attention_mask.to(device_);
    inputs.position_ids = batch.position_ids.to(device_);
    inputs.document_ids = batch.document_ids.to(device_);
    const torch::Tensor logits = built_.model->forward(inputs);
    loss_sum += models::TrainingLossSum(*built_.model, logits, batch.labels.to(device_))
                    .to(torch::kCPU, torch::kDouble);
  }
  parallel_.dp().AllReduce(loss_sum);
  built_.model->train();
  return loss_sum.item<double>() / static_cast<double>(std::max<int64_t>(1, validation_targets_));
}

void Trainer::RecordEval(int64_t step, double val_loss) {
  logger_.Info(absl::StrFormat("eval step %d/%d | val_loss %.4f | %d targets", step,
                               recipe_.train.steps, val_loss, validation_targets_));
  if (!world_.is_root() || recipe_.logging.metrics_file.empty()) return;
  // Appended next to the step lines (the sink's file is opened for appending too).
  std::ofstream out(recipe_.logging.metrics_file, std::ios::out | std::ios::app);
  const nlohmann::json line = {
      {"step", step}, {"val_loss", val_loss}, {"val_targets", validation_targets_}};
  out << line.dump() << "\n";
  if (!out) logger_.Warn("cannot append val_loss to ", recipe_.logging.metrics_file);
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
