// Trainer::Create and the build steps it runs in order: the parallel
// runtime (after the memory check), the model and its optimizer, the
// pipeline schedule, the data loader.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"
#include "core/parallel_for.h"
#include "core/status.h"
#include "parallel/runtime/caching_host_allocator.h"
#include "trainer/loop/data_factory.h"
#include "trainer/loop/memory_check.h"
#include "trainer/loop/trainer.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/frozen_weight_layout.h"
#include "trainer/models/recompute.h"
#include "trainer/optim/grouped_optimizer.h"
#include "trainer/optim/sharded_adamw.h"
#include "trainer/plan/step_time_model.h"

namespace fulcrum::loop {
namespace {

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
  // Ranks sharing cores measure together, as they will train: a rank
  // measuring while the others still start up gets their cores too (86
  // against 70 GFLOP/s per rank for 2 ranks on 2 cores).
  if (recipe.logging.peak_flops <= 0) world.Barrier();
  trainer->peak_flops_ = recipe.logging.peak_flops > 0
                             ? recipe.logging.peak_flops
                             : metrics::MeasureGemmFlops(trainer->device_, gemm_dtype);
  if (world.is_root() && recipe.logging.peak_flops <= 0) {
    // Whether fulcrum's own kernels split across the threads too: where
    // at::parallel_for ran them on one thread nothing else showed it.
    logger.Info(absl::StrFormat(
        "GEMM peak: %.1f GFLOP/s per rank (%s%s)", trainer->peak_flops_ / 1e9,
        c10::toString(gemm_dtype),
        trainer->device_.is_cpu() ? absl::StrFormat(", %d threads; fulcrum's kernels split by %s",
                                                    torch::get_num_threads(), ParallelForBackend())
                                  : std::string()));
    const std::string slow =
        metrics::SlowDtypeWarning(trainer->device_, gemm_dtype, trainer->peak_flops_);
    if (!slow.empty())
      logger.Warn(absl::StrCat("precision.dtype=", recipe.precision.dtype, ": ", slow));
  }
  // What set-up freed (the GEMM peak's 2048^2 operands, a checkpoint's read
  // buffers) stays cached in sizes a step may never ask for: the peak's
  // three 16 MiB blocks were 48 MiB of the ~290M LoRA run's resident set.
  if (parallel::CachingHostAllocator* allocator = parallel::InstalledCachingHostAllocator()) {
    allocator->ReleaseCached();
  }
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
    const int64_t column_major = lora::StoreAliasedFrozenWeightsColumnMajor(*built_.model);
    if (column_major > 0) {
      logger_.Info("LoRA: ", column_major,
                   " frozen weights stored column-major (their rows, 4 KiB apart, alias in the "
                   "cache)");
    }
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
      block->SetCapacityFactor(recipe_.moe.capacity_factor, recipe_.moe.pad_to_capacity);
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

}  // namespace fulcrum::loop
