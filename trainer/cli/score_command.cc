// fulcrum score --model DIR [--adapter DIR] --batch IN.safetensors
//               --out OUT.safetensors [--grads] [parallel.KEY=VALUE ...]
//
// IN: input_ids int64 [B,T]; optional attention_mask int64 [B,T] (1 = real,
// right padding) and labels int64 [B,T] (-100 ignored, unshifted). Without
// labels the targets are input_ids where attention_mask is 1. OUT: logits
// fp32 [B,T,V], loss fp32 (HF mean), and with --grads grad.<name> fp32 for
// every trainable tensor: every parameter by HF name, or with --adapter every
// adapter tensor by its PEFT key. Rank 0 writes.
//
// Under mpirun the same parallel.* overrides as `train` pick the layout: the
// batch's sequences are split over dp (every rank reads the whole file, so
// the loss is normalised by the whole batch's target count), each tp rank
// holds its shards, each pp stage its layers (the rows run through the stages
// as one micro-batch: forward only, or GPipe's forward and backward with
// --grads), each ep rank its routed experts; logits and gradients are
// gathered back to full tensors on rank 0, so OUT is the single-rank result.
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "parallel/pipeline/forward_only.h"
#include "trainer/checkpoint/safetensors_reader.h"
#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/loop/causal_lm_stage.h"
#include "trainer/loop/model_factory.h"
#include "trainer/loop/parallel_setup.h"
#include "trainer/loop/stage_gather.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/loss.h"
#include "trainer/models/moe_block.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::cli {
namespace {

absl::StatusOr<torch::Tensor> ReadBatchTensor(const checkpoint::SafetensorsReader& reader,
                                              const std::string& name, bool required,
                                              const std::vector<int64_t>& shape) {
  if (!reader.Contains(name)) {
    if (!required) return torch::Tensor();
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": missing tensor ", name, " (int64 [B,T])"));
  }
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor t, reader.View(name));
  if (t.scalar_type() != torch::kLong || t.dim() != 2 ||
      (!shape.empty() && t.sizes().vec() != shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": ", name, " must be int64 [B,T] like input_ids, got ",
                     c10::toString(t.scalar_type()), " ", c10::str(t.sizes())));
  }
  return t.clone();
}

// The parallel section from `parallel.KEY=VALUE` words (the recipe's parser
// types and checks them); any other word is an error.
absl::StatusOr<recipe::ParallelSection> ParseParallelOverrides(
    const std::vector<std::string>& words) {
  for (const std::string& word : words) {
    if (!absl::StartsWith(word, "parallel.")) {
      return absl::InvalidArgumentError(absl::StrCat("fulcrum score: unexpected argument '", word,
                                                     "' (only parallel.KEY=VALUE overrides)"));
    }
  }
  FULCRUM_ASSIGN_OR_RETURN(const recipe::Recipe recipe,
                           recipe::ParseRecipe("{}", "fulcrum score", words));
  return recipe.parallel;
}

struct RowRange {
  int64_t start = 0;
  int64_t count = 0;
};

// dp rank r's contiguous share of `rows` (the first rows % dp ranks get one more).
RowRange RowsOf(int64_t rows, int dp_rank, int dp_size) {
  const int64_t base = rows / dp_size, extra = rows % dp_size;
  RowRange range;
  range.start = dp_rank * base + std::min<int64_t>(dp_rank, extra);
  range.count = base + (dp_rank < extra ? 1 : 0);
  return range;
}

// Local logits rows [n, T, V] of every dp rank -> [B, T, V] in rank order.
torch::Tensor GatherRows(const torch::Tensor& local, int64_t rows, parallel::Communicator& dp) {
  if (dp.size() == 1) return local;
  const int64_t per_row = local.numel() / std::max<int64_t>(1, local.size(0));
  std::vector<int64_t> counts;
  for (int r = 0; r < dp.size(); ++r) counts.push_back(RowsOf(rows, r, dp.size()).count * per_row);
  std::vector<int64_t> shape = local.sizes().vec();
  shape[0] = rows;
  torch::Tensor out = torch::empty(shape, local.options());
  dp.AllGatherV(local.contiguous(), out, counts);
  return out;
}

struct ScoreResult {
  torch::Tensor logits;  // this rank's [rows, T, V(/tp)]; undefined off the last pp stage
  torch::Tensor loss;    // this rank's share of the mean loss (0 off the last pp stage)
};

// Under pp: this dp rank's rows as one micro-batch through the stages.
absl::StatusOr<ScoreResult> ScoreThroughStages(models::CausalLMImpl& model,
                                               const loop::ParallelRuntime& runtime,
                                               const models::ForwardInputs& inputs,
                                               const torch::Tensor& labels, double targets,
                                               bool grads) {
  const std::vector<parallel::pipeline::StageChunk>& chunks = runtime.model.pipeline_chunks;
  loop::CausalLmStage stage(model, chunks, torch::kCPU);
  stage.KeepLogits(true);
  std::vector<data::MicroBatch> micro(1);
  micro[0].input_ids = inputs.input_ids;
  micro[0].attention_mask = inputs.attention_mask;
  micro[0].labels = labels;
  stage.SetBatch(micro, targets);
  parallel::pipeline::ScheduleShape shape;
  shape.stages = runtime.pp_size();
  shape.micro_batches = 1;
  shape.virtual_stages = static_cast<int>(chunks.size());
  if (grads) {
    FULCRUM_ASSIGN_OR_RETURN(
        parallel::pipeline::Schedule schedule,
        parallel::pipeline::BuildSchedule(parallel::pipeline::ScheduleKind::kGPipe, shape));
    parallel::pipeline::PipelineExecutor executor(std::move(schedule), runtime.pp_rank(),
                                                  runtime.pipeline_channels());
    executor.Run(stage);
  } else {
    parallel::pipeline::RunForwardOnly(stage, shape, runtime.pp_rank(), runtime.pp());
  }
  ScoreResult result;
  if (!stage.logits().empty()) result.logits = stage.logits().front();
  result.loss = stage.loss_sum() / targets;
  return result;
}

}  // namespace

absl::Status RunScore(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"model", "adapter", "batch", "out"};
  spec.switches = {"grads"};
  spec.required = {"model", "batch", "out"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("score", args, spec));
  FULCRUM_ASSIGN_OR_RETURN(const recipe::ParallelSection parallel_section,
                           ParseParallelOverrides(flags.positional));

  recipe::ModelSection model_section;
  model_section.path = flags.Get("model");
  FULCRUM_ASSIGN_OR_RETURN(const models::ModelConfig config,
                           loop::LoadRequestedConfig(model_section));
  recipe::Recipe layout_recipe;
  layout_recipe.source = "fulcrum score";
  layout_recipe.model = model_section;
  // Scoring reads the main model's logits only: multi-token-prediction
  // layers play no part (HF drops them as well).
  layout_recipe.model.mtp_layers = "skip";
  layout_recipe.parallel = parallel_section;
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipeForModel(layout_recipe, config));
  FULCRUM_ASSIGN_OR_RETURN(loop::ParallelRuntime runtime,
                           loop::BuildParallelRuntime(parallel_section, "cpu", config, world));

  loop::ModelRequest request;
  request.path = flags.Get("model");
  request.parallel = runtime.model;
  request.load.skip_mtp_layers = true;  // see layout_recipe
  FULCRUM_ASSIGN_OR_RETURN(loop::BuiltModel built, loop::BuildModel(request));
  const bool with_adapter = !flags.Get("adapter").empty();
  if (with_adapter) {
    // Under pp each stage loads its layers' adapters, under ep each rank its
    // experts'; the rest are other ranks'.
    const models::ModelParallel& parallel = runtime.model;
    std::set<std::string> modules;
    for (const auto& item : built.model->named_modules()) modules.insert(item.key());
    auto held_elsewhere = [&parallel, &modules](const std::string& p) {
      return parallel.HeldByOtherStage(p) ||
             (parallel.expert_sharded() && models::IsRoutedExpertParameter(p) &&
              modules.count(p) == 0);
    };
    FULCRUM_RETURN_IF_ERROR(
        lora::LoadPeftAdapter(*built.model, flags.Get("adapter"), held_elsewhere).status());
  }
  FULCRUM_ASSIGN_OR_RETURN(auto reader, checkpoint::SafetensorsReader::Open(flags.Get("batch")));
  torch::Tensor input_ids, attention_mask, labels;
  FULCRUM_ASSIGN_OR_RETURN(input_ids, ReadBatchTensor(*reader, "input_ids", true, {}));
  const std::vector<int64_t> shape = input_ids.sizes().vec();
  FULCRUM_ASSIGN_OR_RETURN(attention_mask,
                           ReadBatchTensor(*reader, "attention_mask", false, shape));
  FULCRUM_ASSIGN_OR_RETURN(labels, ReadBatchTensor(*reader, "labels", false, shape));
  const int64_t vocab = built.config.vocab_size;
  if (input_ids.min().item<int64_t>() < 0 || input_ids.max().item<int64_t>() >= vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        flags.Get("batch"), ": input_ids: ids must be in [0, ", vocab, ") for this model"));
  }
  const int64_t rows = input_ids.size(0);
  if (rows < runtime.dp_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.Get("batch"), ": ", rows,
                     " sequences cannot be split over parallel.dp=", runtime.dp_size()));
  }
  if (!labels.defined()) {
    labels = input_ids.clone();
    if (attention_mask.defined()) labels.masked_fill_(attention_mask.eq(0), -100);
  }
  // HF's mean is over the whole batch's targets, whichever rows a rank holds.
  const double targets = static_cast<double>(std::max<int64_t>(1, models::CountTargets(labels)));
  const RowRange mine = RowsOf(rows, runtime.dp_rank(), runtime.dp_size());
  models::ForwardInputs inputs;
  inputs.input_ids = input_ids.narrow(0, mine.start, mine.count);
  if (attention_mask.defined()) {
    inputs.attention_mask = attention_mask.narrow(0, mine.start, mine.count);
  }
  const torch::Tensor local_labels = labels.narrow(0, mine.start, mine.count);

  const bool grads = flags.Has("grads");
  built.model->eval();
  for (auto& p : built.model->parameters()) {
    // Base weights get gradients only when scoring without an adapter.
    if (!with_adapter) p.requires_grad_(grads);
  }
  torch::Tensor logits;
  torch::Tensor loss;
  if (runtime.pp_size() > 1) {
    FULCRUM_ASSIGN_OR_RETURN(
        const ScoreResult result,
        ScoreThroughStages(*built.model, runtime, inputs, local_labels, targets, grads));
    logits = result.logits;
    loss = result.loss;
  } else {
    torch::AutoGradMode grad_mode(grads);
    logits = built.model->forward(inputs);
    loss = models::TrainingLossSum(*built.model, logits, local_labels) / targets;
    if (grads) loss.backward();
  }
  parallel::Communicator& dp = runtime.dp();
  torch::Tensor total_loss = loss.detach().to(torch::kFloat).reshape({}).clone();
  dp.AllReduce(total_loss);
  if (runtime.pp_size() > 1) runtime.pp().AllReduce(total_loss);
  std::vector<checkpoint::NamedTensor> out = {{"loss", total_loss}};
  if (logits.defined()) {
    out.push_back(
        {"logits",
         GatherRows(models::GatherLogits(*built.model, logits.detach()).contiguous(), rows, dp)});
  }
  // Under ep the routed experts' gradients are summed over the ranks holding
  // the same experts, and every ep rank's go to the first (rank 0's).
  std::vector<checkpoint::NamedTensor> expert_grads;
  if (grads) {
    models::SyncPartialGradients(*built.model);
    for (const models::ParamLayout& layout : models::ParallelLayouts(*built.model)) {
      if (!layout.param.requires_grad()) continue;
      const std::string key = with_adapter ? "base_model.model." + layout.name : layout.name;
      torch::Tensor g = layout.param.grad();
      g = g.defined() ? g.to(torch::kFloat).contiguous() : torch::zeros_like(layout.param);
      const bool expert = layout.routed_expert && runtime.ep_size() > 1;
      (expert ? runtime.expert_dp() : dp).AllReduce(g);
      checkpoint::NamedTensor grad{"grad." + key,
                                   models::GatherFull(layout, g).to(torch::kFloat).contiguous()};
      (expert ? expert_grads : out).push_back(std::move(grad));
    }
  }
  if (runtime.ep_size() > 1) {
    if (runtime.ep_rank() > 0) out.clear();
    out.insert(out.end(), std::make_move_iterator(expert_grads.begin()),
               std::make_move_iterator(expert_grads.end()));
    out = loop::GatherAcrossStages(std::move(out), runtime.ep());
  }
  // Under pp every stage's logits and gradients go to stage 0 (rank 0's).
  out = loop::GatherAcrossStages(std::move(out), runtime.pp());
  if (!world.is_root()) return absl::OkStatus();
  return checkpoint::WriteSafetensors(flags.Get("out"), out);
}

}  // namespace fulcrum::cli
