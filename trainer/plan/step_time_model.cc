#include "trainer/plan/step_time_model.h"

#include <algorithm>

#include "core/status.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/schedule_simulator.h"
#include "parallel/pipeline/stage_partition.h"
#include "trainer/metrics/parameter_count.h"
#include "trainer/optim/adamw_bandwidth.h"
#include "trainer/plan/memory_model.h"

namespace fulcrum::plan {
namespace {

namespace pipeline = fulcrum::parallel::pipeline;

// Bytes leaving a rank in a ring all-reduce (or reduce-scatter + all-gather)
// of `bytes` over `n` ranks.
double RingBytes(double bytes, int64_t n) {
  return n > 1 ? 2.0 * static_cast<double>(n - 1) / static_cast<double>(n) * bytes : 0.0;
}

// A group of `span` consecutive ranks (its stride included) stays in a node
// when it fits in one.
double Bandwidth(const Hardware& hw, int64_t span) {
  return span <= hw.ranks_per_node ? hw.intra_node_bytes_per_s : hw.inter_node_bytes_per_s;
}

// Forward FLOPs per token that recomputation repeats: the scores' matmul in
// every mode (the attention core recomputes its probabilities in backward,
// models/attention_core.h), plus a whole layer's forward (full). Selective
// recomputes only RMSNorms, which are not counted. `lm_head`: whether m
// counts it (it is not recomputed).
double RecomputeFlopsPerToken(const metrics::FlopsModel& m, const models::ModelConfig& config,
                              const std::string& recompute, int64_t seq_len, bool lm_head) {
  const double attention = 2.0 * 2.0 * static_cast<double>(seq_len) *
                           static_cast<double>(m.head_dim * m.num_heads * m.num_layers);
  if (recompute != "full") return attention / 2;
  // The layers' matmuls (not lm_head) once more.
  const double head = lm_head ? static_cast<double>(config.vocab_size * config.hidden_size) : 0.0;
  const double matmul =
      static_cast<double>(m.frozen_matmul_params + m.trainable_matmul_params) - head;
  return 2.0 * matmul + attention;
}

// Per layer and micro-batch, the tp collectives of [B, T, hidden] that hold
// up the rank: forward, the row-parallel outputs' 2 reductions (sp: and the
// column groups' 2 gathers); backward, the column groups' 2 reductions (sp:
// reduce-scatters, and 2 gathers of their input again), unless the backend
// overlaps them, and under sp the row outputs' 2 gathers.
double TpCollectivesPerLayer(bool sequence_parallel, bool overlapped) {
  const double forward = sequence_parallel ? 4.0 : 2.0;
  const double column_groups_backward = sequence_parallel ? 4.0 : 2.0;
  const double row_outputs_backward = sequence_parallel ? 2.0 : 0.0;
  return forward + (overlapped ? 0.0 : column_groups_backward) + row_outputs_backward;
}

// Blocking collectives of one micro-batch on a rank of a stage with
// `layers` layers (`moe_layers` of them MoE), forward and backward: tp's
// per layer (TpCollectivesPerLayer), plus the vocab-parallel embedding's 1
// and lm_head's and the loss's 3 (under pp the last stage's 3, the worst);
// ep the count exchange (none with padded capacity slots) and 2 all-to-alls
// forward, 2 backward, per MoE layer; pp a send each way.
double BlockingCollectivesPerMicroBatch(const recipe::Recipe& recipe, const Hardware& hw,
                                        double layers, double moe_layers) {
  const recipe::ParallelSection& par = recipe.parallel;
  double n = 0;
  if (par.tp > 1) {
    n += TpCollectivesPerLayer(par.sequence_parallel, hw.overlaps_communication) * layers +
         (par.pp > 1 ? 3.0 : 4.0);
  }
  if (par.ep > 1) n += (PaddedToCapacity(recipe) ? 4.0 : 5.0) * moe_layers;
  if (par.pp > 1) n += 2.0;
  return n;
}

// The optimizer's memory traffic per parameter it updates: AdamW's fp32
// state, the gradient read again by the clipping norm and zeroed, and under
// bf16 the bf16 copy of the fp32 master written.
double OptimizerBytesPerParam(bool bf16) {
  return optim::kAdamWStateBytesPerParam + 2.0 * 4.0 + (bf16 ? 2.0 : 0.0);
}

// The routed experts' matmul parameters a token passes through (k of E
// experts' share) in layers [first, first + count).
double RoutedMatmulParamsPerToken(const models::ModelConfig& c, int64_t first, int64_t count) {
  if (c.moe.num_experts <= 0) return 0.0;
  double params = 0;
  for (int64_t layer = first; layer < first + count; ++layer) {
    params += static_cast<double>(metrics::CountLayerParameters(c, layer).routed_experts);
  }
  return params * static_cast<double>(c.moe.experts_per_token) /
         static_cast<double>(c.moe.num_experts);
}

// FLOPs model of layers [first, first + count), with lm_head when `lm_head`,
// as `recipe` trains them (full or LoRA).
metrics::FlopsModel FlopsModelOf(const models::ModelConfig& c, const recipe::Recipe& recipe,
                                 int64_t first, int64_t count, bool lm_head) {
  recipe::Recipe whole = recipe;  // the whole model: one tp shard, every expert
  whole.parallel.tp = 1;
  whole.parallel.ep = 1;
  // lm_head (or tied embedding) is a matmul; the embedding lookup is not.
  double matmul = lm_head ? static_cast<double>(c.vocab_size * c.hidden_size) : 0.0;
  double adapters = 0;
  for (int64_t layer = first; layer < first + count; ++layer) {
    const metrics::LayerParameterCounts counts = metrics::CountLayerParameters(c, layer);
    // A token visits k of the routed experts; norms are no matmul.
    matmul += static_cast<double>(counts.tp_split + counts.replicated - 2 * c.hidden_size);
    adapters += LayerAdapterParams(c, whole, layer);
  }
  matmul += RoutedMatmulParamsPerToken(c, first, count);
  metrics::FlopsModel m;
  if (recipe.finetune.method == "lora") {
    m.frozen_matmul_params = static_cast<int64_t>(matmul);
    m.trainable_matmul_params = static_cast<int64_t>(adapters);
  } else {
    m.trainable_matmul_params = static_cast<int64_t>(matmul);
  }
  m.num_layers = count;
  m.num_heads = c.num_heads;
  // MLA: scores over qk, values over v.
  m.head_dim = c.mla.enabled() ? (c.mla.qk_head_dim() + c.mla.v_head_dim) / 2 : c.head_dim;
  return m;
}

// The MoE layers among layers [first, first + count).
int64_t MoeLayersIn(const models::ModelConfig& c, int64_t first, int64_t count) {
  int64_t moe = 0;
  for (int64_t layer = first; layer < first + count; ++layer) moe += models::IsMoeLayer(c, layer);
  return moe;
}

// What one token costs a pipeline stage's rank (before the split over tp):
// its layers' training FLOPs with recomputation, and the padded capacity
// slots' extra expert FLOPs (the experts then multiply capacity_factor x N x
// k rows, padding included, not the N x k the model's FLOPs count).
double StageFlopsPerToken(const models::ModelConfig& c, const recipe::Recipe& recipe,
                          const std::vector<pipeline::StageChunk>& chunks) {
  double flops = 0;
  for (const pipeline::StageChunk& chunk : chunks) {
    const metrics::FlopsModel m =
        FlopsModelOf(c, recipe, chunk.layers.first, chunk.layers.count, chunk.last);
    flops += metrics::TrainingFlopsPerToken(m, recipe.batch.seq_len) +
             RecomputeFlopsPerToken(m, c, RecomputeMode(recipe), recipe.batch.seq_len, chunk.last);
    if (PaddedToCapacity(recipe)) {
      flops += (recipe.moe.capacity_factor - 1.0) *
               RoutedMatmulParamsPerToken(c, chunk.layers.first, chunk.layers.count) *
               (recipe.finetune.method == "lora" ? 4.0 : 6.0);
    }
  }
  return flops;
}

}  // namespace

bool PaddedToCapacity(const recipe::Recipe& recipe) {
  return recipe.moe.pad_to_capacity && recipe.moe.capacity_factor > 0;
}

metrics::FlopsModel FlopsModelFor(const models::ModelConfig& c, const recipe::Recipe& recipe) {
  return FlopsModelOf(c, recipe, 0, c.num_layers, /*lm_head=*/true);
}

absl::StatusOr<StepTime> EstimateStepTime(const models::ModelConfig& c,
                                          const recipe::Recipe& recipe, const Hardware& hw) {
  const recipe::ParallelSection& par = recipe.parallel;
  const int64_t seq = recipe.batch.seq_len;
  const int64_t micro_batches = recipe::GradAccumulationSteps(recipe.batch, par.dp);
  const double s = recipe.precision.dtype == "bf16" ? 2.0 : 4.0;
  const double tokens_per_step = static_cast<double>(recipe.batch.global_batch * seq);
  // One micro-batch's activation [B, T, hidden] on a rank.
  const double activation = static_cast<double>(recipe.batch.micro_batch * seq * c.hidden_size) * s;

  StepTime t;
  const metrics::FlopsModel flops = FlopsModelFor(c, recipe);
  t.flops_per_token =
      metrics::TrainingFlopsPerToken(flops, seq) +
      RecomputeFlopsPerToken(flops, c, RecomputeMode(recipe), seq, /*lm_head=*/true);
  // Each stage's rank computes its own layers (the last also lm_head) for
  // its dp share of the tokens, over tp.
  FULCRUM_ASSIGN_OR_RETURN(
      const pipeline::StagePartition partition,
      pipeline::StagePartition::Create(c.num_layers, static_cast<int>(par.pp),
                                       static_cast<int>(par.pp_virtual), par.pp_layers));
  const double rate = hw.peak_flops * hw.efficiency;
  // Each MoE layer routes every token of a micro-batch to k experts (into
  // capacity_factor x k slots when padded).
  const double rows_per_moe_layer =
      c.moe.enabled() ? static_cast<double>(recipe.batch.micro_batch * seq) *
                            static_cast<double>(c.moe.experts_per_token) *
                            (PaddedToCapacity(recipe) ? recipe.moe.capacity_factor : 1.0)
                      : 0.0;
  double compute_sum = 0;
  for (int stage = 0; stage < static_cast<int>(par.pp); ++stage) {
    const std::vector<pipeline::StageChunk> chunks = partition.ChunksOf(stage);
    int64_t stage_moe_layers = 0;
    for (const pipeline::StageChunk& chunk : chunks) {
      stage_moe_layers += MoeLayersIn(c, chunk.layers.first, chunk.layers.count);
    }
    const double rows = rows_per_moe_layer * static_cast<double>(stage_moe_layers * micro_batches);
    const double stage_s = StageFlopsPerToken(c, recipe, chunks) * tokens_per_step /
                               static_cast<double>(par.dp * par.tp) / rate +
                           rows * hw.moe_row_s;
    t.stage_compute_s.push_back(stage_s);
    if (stage_s >= t.compute_s) {
      t.compute_s = stage_s;
      t.moe_rows = rows;
    }
    compute_sum += stage_s;
  }
  const double compute_mean = compute_sum / static_cast<double>(par.pp);

  const double stage_layers = static_cast<double>(c.num_layers) / static_cast<double>(par.pp);
  const double micro = static_cast<double>(micro_batches);
  if (par.tp > 1) {
    // An all-reduce moves RingBytes, a gather or a reduce-scatter half of it.
    const double per_all_reduce = par.sequence_parallel ? 0.5 : 1.0;
    t.tp_comm_s = per_all_reduce *
                  TpCollectivesPerLayer(par.sequence_parallel, hw.overlaps_communication) *
                  stage_layers * micro * RingBytes(activation, par.tp) / Bandwidth(hw, par.tp);
  }
  const int64_t moe_layers = MoeLayersIn(c, 0, c.num_layers);
  if (par.ep > 1 && c.moe.enabled()) {
    const double rows_per_choice = PaddedToCapacity(recipe) ? recipe.moe.capacity_factor : 1.0;
    const double routed = activation * static_cast<double>(c.moe.experts_per_token) *
                          rows_per_choice * static_cast<double>(par.ep - 1) /
                          static_cast<double>(par.ep);
    t.ep_comm_s = 4.0 * static_cast<double>(moe_layers) / static_cast<double>(par.pp) * micro *
                  routed / Bandwidth(hw, par.tp * par.ep);
  }
  if (par.pp > 1) {
    t.pp_comm_s = 2.0 * micro * activation / Bandwidth(hw, par.tp * par.dp * par.pp);
  }
  MemoryOptions none;
  FULCRUM_ASSIGN_OR_RETURN(const MemoryPlan memory, PlanMemory(c, recipe, none));
  const double trainable = memory.worst_stage().trainable_params;
  if (par.dp > 1) {
    t.dp_comm_s = RingBytes(trainable * s, par.dp) / Bandwidth(hw, par.tp * par.dp);
  }
  if (hw.memory_bytes_per_s > 0) {
    const double updated = par.zero >= 1 ? trainable / static_cast<double>(par.dp) : trainable;
    t.optimizer_s = updated * OptimizerBytesPerParam(s == 2.0) / hw.memory_bytes_per_s;
  }
  t.blocking_collectives =
      micro *
      BlockingCollectivesPerMicroBatch(
          recipe, hw, stage_layers, static_cast<double>(moe_layers) / static_cast<double>(par.pp));
  t.latency_s = t.blocking_collectives * hw.collective_latency_s;
  if (par.pp > 1) {
    FULCRUM_ASSIGN_OR_RETURN(const pipeline::ScheduleKind kind,
                             pipeline::ParseScheduleKind(par.pp_schedule));
    pipeline::ScheduleShape shape;
    shape.stages = static_cast<int>(par.pp);
    shape.micro_batches = static_cast<int>(micro_batches);
    shape.virtual_stages = static_cast<int>(par.pp_virtual);
    t.bubble_fraction = pipeline::TheoreticalBubbleFraction(kind, shape);
  }
  // The slowest stage paces the pipeline's steady state; filling and
  // draining it costs the schedule's bubble over the average stage (the
  // textbook busy / (1 - bubble) when the stages are alike).
  const double comm = t.tp_comm_s + t.ep_comm_s + t.pp_comm_s + t.latency_s;
  const double bubble_s =
      (compute_mean + comm) * t.bubble_fraction / std::max(1e-9, 1.0 - t.bubble_fraction);
  t.step_s = t.compute_s + comm + bubble_s + t.dp_comm_s + t.optimizer_s;
  t.tokens_per_s = t.step_s > 0 ? tokens_per_step / t.step_s : 0.0;
  return t;
}

}  // namespace fulcrum::plan
