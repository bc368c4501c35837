#include "trainer/plan/memory_model.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/schedule_simulator.h"
#include "parallel/pipeline/stage_partition.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/metrics/parameter_count.h"
#include "trainer/models/attention_core.h"
#include "trainer/models/expert_capacity.h"
#include "trainer/models/loss.h"

namespace fulcrum::plan {
namespace {

namespace pipeline = fulcrum::parallel::pipeline;

constexpr double kFloat = 4.0;  // fp32 bytes: softmax, loss and RMSNorm intermediates, AdamW

// The sizes of one rank's share of one micro-batch, and which weights train.
struct Shape {
  double s = 4;       // parameter / activation dtype bytes
  double b = 1;       // micro-batch
  double t = 1;       // sequence length
  double n = 1;       // tokens b * t
  double n_norm = 1;  // tokens a norm sees (T/tp under sequence parallelism)
  double tp = 1;
  double lora_rank = 0;
  bool full = true;           // full fine-tuning: every weight trains
  bool lora_dropout = false;  // adapters drop their input (down then keeps its input)
  // The projections reading a decoder layer's norms (dense attention's
  // q/k/v, a dense MLP's gate/up) compute the norm's output again in
  // backward instead of keeping it (lora/normed_linear.h; under tp
  // lora/column_group.h, which under sp gathers it again): unless an
  // adapter's dropout mask would have to be replayed.
  bool norm_recomputed = false;
  std::vector<std::string> targets;   // finetune.lora.targets
  double padded_capacity_factor = 0;  // > 0: MoE rows in capacity slots (moe.pad_to_capacity)

  // The linear `name` keeps its input for backward: its weight trains or an
  // adapter reads it.
  bool Keeps(const std::string& name) const { return full || Adapted(name); }
  bool Adapted(const std::string& name) const {
    return !full && lora::TargetsSelect(targets, name);
  }
  // LoRA's low-rank intermediate [tokens, r], saved by B's matmul.
  double Low(const std::string& name, double tokens) const {
    return Adapted(name) ? tokens * lora_rank * s : 0.0;
  }
  // RMSNorm over `tokens` rows of `width`: its input and each row's fp32
  // 1/rms (models/rms_norm.cc recomputes the rest in backward).
  double Norm(double tokens, double width) const { return tokens * (width * s + kFloat); }
  // Each score row's fp32 max and 1 / sum: the attention core's backward
  // recomputes the probabilities from them (models/attention_core.h).
  double RowStatistics(double heads) const { return 2 * b * heads * t * kFloat; }
};

Shape ShapeOf(const recipe::Recipe& recipe) {
  Shape sh;
  sh.s = recipe.precision.dtype == "bf16" ? 2.0 : 4.0;
  sh.b = static_cast<double>(recipe.batch.micro_batch);
  sh.t = static_cast<double>(recipe.batch.seq_len);
  sh.n = sh.b * sh.t;
  sh.tp = static_cast<double>(recipe.parallel.tp);
  const bool sp = recipe.parallel.sequence_parallel && recipe.parallel.tp > 1;
  sh.n_norm = sp ? sh.n / sh.tp : sh.n;
  sh.full = recipe.finetune.method != "lora";
  sh.lora_rank = static_cast<double>(recipe.finetune.lora.rank);
  sh.lora_dropout = !sh.full && recipe.finetune.lora.dropout > 0.0;
  sh.norm_recomputed = !sh.lora_dropout;
  sh.targets = recipe.finetune.lora.targets;
  if (recipe.moe.pad_to_capacity) sh.padded_capacity_factor = recipe.moe.capacity_factor;
  return sh;
}

// GQA attention: projections' input (unless norm_recomputed), q/k/v after rope, the rows' softmax
// statistics, o's input.
double DenseAttentionBytes(const models::ModelConfig& c, const Shape& sh) {
  const double h = static_cast<double>(c.hidden_size), d = static_cast<double>(c.head_dim);
  const double heads = static_cast<double>(c.num_heads) / sh.tp;
  const double kv_heads = std::max(1.0, static_cast<double>(c.num_kv_heads) / sh.tp);
  const double q = heads * d, kv = kv_heads * d;
  const bool keeps_input = sh.Keeps("q_proj") || sh.Keeps("k_proj") || sh.Keeps("v_proj");
  double bytes = keeps_input && !sh.norm_recomputed ? sh.n * h * sh.s : 0.0;
  bytes += sh.n * (q + 2 * kv) * sh.s + sh.RowStatistics(heads);
  if (sh.Keeps("o_proj")) bytes += sh.n * q * sh.s;
  for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"}) bytes += sh.Low(name, sh.n);
  if (c.qk_norm) bytes += sh.Norm(sh.n * (heads + kv_heads), d);
  return bytes;
}

// Latent attention: the tokens, the latents and their norms, q, the
// head-expanded k, v, the rows' softmax statistics, o's input.
double LatentAttentionBytes(const models::ModelConfig& c, const Shape& sh) {
  const models::MlaConfig& m = c.mla;
  const double h = static_cast<double>(c.hidden_size);
  const double heads = static_cast<double>(c.num_heads) / sh.tp;
  const double qk = static_cast<double>(m.qk_head_dim()), v = static_cast<double>(m.v_head_dim);
  const double kv_rank = static_cast<double>(m.kv_lora_rank);
  double bytes = sh.n * h * sh.s;  // q (or q_a) and kv_a read the (gathered) tokens
  if (m.q_lora_rank > 0) {
    const double q_rank = static_cast<double>(m.q_lora_rank);
    bytes += sh.Norm(sh.n, q_rank) + sh.n * q_rank * sh.s + sh.Low("q_b_proj", sh.n);
  }
  bytes += sh.Norm(sh.n, kv_rank) + sh.n * kv_rank * sh.s;
  bytes += sh.n * heads * (2 * qk + 2 * v) * sh.s + sh.RowStatistics(heads);
  for (const char* name : {"q_proj", "q_a_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}) {
    bytes += sh.Low(name, sh.n);
  }
  return bytes;
}

// SwiGLU over `tokens` rows of width `width` (this rank's share): input
// (unless the caller counted it or it is recomputed: input_counted), gate, up. Backward recomputes
// silu(gate) and down's input silu(gate) * up (lora/swiglu_linear.h) unless LoRA dropout makes down
// keep its input.
double SwiGluBytes(const Shape& sh, double hidden, double width, double tokens,
                   const std::string& gate, const std::string& up, const std::string& down,
                   bool input_counted) {
  double bytes = 2 * tokens * width * sh.s;
  if (!input_counted && (sh.Keeps(gate) || sh.Keeps(up))) bytes += tokens * hidden * sh.s;
  if (sh.lora_dropout && sh.Keeps(down)) bytes += tokens * width * sh.s;
  return bytes + sh.Low(gate, tokens) + sh.Low(up, tokens) + sh.Low(down, tokens);
}

// MoE block: the (gathered) tokens the router and the shared expert read,
// the router's fp32 scores, the permuted tokens each expert reads (k per
// token, ~N k rows per rank whatever ep), the experts' SwiGLU, their outputs
// kept by the combine's weighting, the shared expert.
double MoeBytes(const models::ModelConfig& c, const Shape& sh) {
  const models::MoeConfig& moe = c.moe;
  const double h = static_cast<double>(c.hidden_size);
  const double k = static_cast<double>(moe.experts_per_token);
  const bool mixtral = moe.style == models::MoeStyle::kMixtral;
  const std::string gate = mixtral ? "w1" : "gate_proj", up = mixtral ? "w3" : "up_proj",
                    down = mixtral ? "w2" : "down_proj";
  double bytes = sh.n * h * sh.s + 2 * sh.n * static_cast<double>(moe.num_experts) * kFloat;
  // Padded: every expert's capacity slots, empty ones included.
  const double rows =
      sh.padded_capacity_factor > 0
          ? static_cast<double>(moe.num_experts * models::ExpertCapacity(static_cast<int64_t>(sh.n),
                                                                         moe.experts_per_token,
                                                                         moe.num_experts,
                                                                         sh.padded_capacity_factor))
          : sh.n * k;
  bytes += rows * h * sh.s;  // the dispatched tokens
  bytes += SwiGluBytes(sh, h, static_cast<double>(moe.expert_intermediate_size) / sh.tp, rows, gate,
                       up, down, /*input_counted=*/true);
  bytes += rows * h * sh.s;  // expert outputs, for the routing weights' gradient
  if (moe.shared_intermediate_size > 0) {
    bytes += SwiGluBytes(sh, h, static_cast<double>(moe.shared_intermediate_size) / sh.tp, sh.n,
                         "gate_proj", "up_proj", "down_proj", /*input_counted=*/true);
  }
  return bytes;
}

// What `layer`'s backward allocates beyond the saved activations: the
// recomputed probabilities and their gradient (fp32) of one block of query
// positions (at most all t keys each), and the MLP's widest gradient;
// recomputed regions rebuild their activations first.
double LayerBackwardBytes(const models::ModelConfig& c, const recipe::Recipe& recipe,
                          const std::string& recompute, int64_t layer, bool cuda) {
  const Shape sh = ShapeOf(recipe);
  const double heads = static_cast<double>(c.num_heads) / sh.tp;
  const double width =
      models::IsMoeLayer(c, layer)
          ? static_cast<double>(c.moe.expert_intermediate_size * c.moe.experts_per_token)
          : static_cast<double>(c.intermediate_size);
  const double query_rows =
      static_cast<double>(models::EagerQueryBlockRows(static_cast<int64_t>(sh.t), cuda));
  double bytes = 2 * sh.b * heads * query_rows * sh.t * kFloat + 2 * sh.n * width / sh.tp * sh.s;
  if (recompute == "full") bytes += ActivationBytes(c, recipe, "none", layer);
  return bytes;
}

// The last stage's loss: the final norm's input and output (lm_head's input).
// Without an adapter on lm_head, models::LinearCrossEntropySum holds a chunk
// of rows' logits and their gradient, the gradient of lm_head's input and,
// when lm_head trains, its fp32 gradient; under sequence parallelism also
// the gathered input. With one, the logits [N, V/tp] and their gradient,
// which the chunked cross entropy (models/loss.cc, and under tp
// parallel/tensor/vocab_parallel_cross_entropy.h) writes, in their dtype,
// while they are still alive.
double LossBytes(const models::ModelConfig& c, const recipe::Recipe& recipe, bool cuda) {
  const Shape sh = ShapeOf(recipe);
  const double h = static_cast<double>(c.hidden_size);
  const double vocab = static_cast<double>(c.vocab_size) / sh.tp;
  const double norm = sh.Norm(sh.n_norm, h);
  if (!sh.Adapted("lm_head")) {
    const int64_t shard_rows = c.vocab_size / static_cast<int64_t>(sh.tp);  // even (validated)
    const double rows =
        static_cast<double>(models::HeadChunkRows(static_cast<int64_t>(sh.n), shard_rows, cuda,
                                                  /*weight_trains=*/sh.full));
    const double weight_grad = sh.full ? vocab * h * kFloat : 0.0;
    const double gathered = sh.n_norm < sh.n ? sh.n * h * sh.s : 0.0;
    const double buffers = models::HeadChunkBuffers(cuda, sh.s == kFloat, sh.tp > 1);
    return norm + (sh.n_norm + sh.n) * h * sh.s + gathered + buffers * rows * vocab * sh.s +
           weight_grad;
  }
  return norm + (sh.Keeps("lm_head") ? sh.n * h * sh.s : 0.0) + 2 * sh.n * vocab * sh.s;
}

// What the last stage's loss keeps from its forward to its backward, per
// micro-batch in flight: the final norm's input and 1/rms and, without an
// adapter on lm_head, the gradients LinearCrossEntropySum computed in
// forward (lm_head's input's, and its fp32 weight's when it trains); with
// one, the logits' gradient and lm_head's input when it is kept.
double LossKeptBytes(const models::ModelConfig& c, const recipe::Recipe& recipe) {
  const Shape sh = ShapeOf(recipe);
  const double h = static_cast<double>(c.hidden_size);
  const double vocab = static_cast<double>(c.vocab_size) / sh.tp;
  const double norm = sh.Norm(sh.n_norm, h);
  if (!sh.Adapted("lm_head")) return norm + sh.n * h * sh.s + (sh.full ? vocab * h * kFloat : 0.0);
  return norm + (sh.Keeps("lm_head") ? sh.n * h * sh.s : 0.0) + sh.n * vocab * sh.s;
}

// Per micro-batch, shared by the layers: the rope tables (saved by every
// layer's rotation) and, when regions are recomputed, the additive mask
// [B, 1, T, T] they keep as an input.
double SharedPerMicroBatchBytes(const models::ModelConfig& c, const recipe::Recipe& recipe,
                                const std::string& recompute) {
  const Shape sh = ShapeOf(recipe);
  const double rope_dim =
      static_cast<double>(c.mla.enabled() ? c.mla.qk_rope_head_dim : c.head_dim);
  double bytes = 2 * sh.n * rope_dim * sh.s;
  if (recompute != "none") bytes += sh.b * sh.t * sh.t * sh.s;
  return bytes;
}

// A LoRA adapter's parameters on a linear [out, in] split by `shard`.
enum class Split { kColumn, kRow, kNone };
double AdapterParams(double in, double out, Split split, double r, double tp) {
  if (split == Split::kColumn) return r * (in + out / tp);
  if (split == Split::kRow) return r * (in / tp + out);
  return r * (in + out);
}

}  // namespace

double LayerAdapterParams(const models::ModelConfig& c, const recipe::Recipe& recipe,
                          int64_t layer) {
  const Shape sh = ShapeOf(recipe);
  if (sh.full) return 0.0;
  const double r = sh.lora_rank, tp = sh.tp, h = static_cast<double>(c.hidden_size);
  double params = 0;
  const auto add = [&](const std::string& name, double in, double out, Split split,
                       double copies = 1.0) {
    if (sh.Adapted(name)) params += copies * AdapterParams(in, out, split, r, tp);
  };
  if (c.mla.enabled()) {
    const models::MlaConfig& m = c.mla;
    const double heads = static_cast<double>(c.num_heads);
    const double qk = static_cast<double>(m.qk_head_dim());
    if (m.q_lora_rank > 0) {
      add("q_a_proj", h, static_cast<double>(m.q_lora_rank), Split::kNone);
      add("q_b_proj", static_cast<double>(m.q_lora_rank), heads * qk, Split::kColumn);
    } else {
      add("q_proj", h, heads * qk, Split::kColumn);
    }
    add("kv_a_proj_with_mqa", h, static_cast<double>(m.kv_lora_rank + m.qk_rope_head_dim),
        Split::kNone);
    add("kv_b_proj", static_cast<double>(m.kv_lora_rank),
        heads * static_cast<double>(m.qk_nope_head_dim + m.v_head_dim), Split::kColumn);
    add("o_proj", heads * static_cast<double>(m.v_head_dim), h, Split::kRow);
  } else {
    const double q = static_cast<double>(c.num_heads * c.head_dim);
    const double kv = static_cast<double>(c.num_kv_heads * c.head_dim);
    add("q_proj", h, q, Split::kColumn);
    add("k_proj", h, kv, Split::kColumn);
    add("v_proj", h, kv, Split::kColumn);
    add("o_proj", q, h, Split::kRow);
  }
  const auto add_swiglu = [&](double width, bool mixtral, double copies) {
    add(mixtral ? "w1" : "gate_proj", h, width, Split::kColumn, copies);
    add(mixtral ? "w3" : "up_proj", h, width, Split::kColumn, copies);
    add(mixtral ? "w2" : "down_proj", width, h, Split::kRow, copies);
  };
  if (!models::IsMoeLayer(c, layer)) {
    add_swiglu(static_cast<double>(c.intermediate_size), false, 1.0);
    return params;
  }
  const models::MoeConfig& moe = c.moe;
  const double local_experts =
      static_cast<double>(moe.num_experts) / static_cast<double>(recipe.parallel.ep);
  add_swiglu(static_cast<double>(moe.expert_intermediate_size),
             moe.style == models::MoeStyle::kMixtral, local_experts);
  add("gate", h, static_cast<double>(moe.num_experts), Split::kNone);
  if (moe.shared_intermediate_size > 0) {
    add_swiglu(static_cast<double>(moe.shared_intermediate_size), false, 1.0);
  }
  return params;
}

namespace {

// Parameters of one stage's rank: {dense, routed experts}.
struct StageParams {
  double dense = 0;
  double experts = 0;
  double adapters = 0;
};

StageParams CountStageParams(const models::ModelConfig& c, const recipe::Recipe& recipe,
                             const std::vector<pipeline::StageChunk>& chunks) {
  const double tp = static_cast<double>(recipe.parallel.tp);
  const double ep = static_cast<double>(recipe.parallel.ep);
  const bool pipelined = recipe.parallel.pp > 1;
  StageParams p;
  bool first = false, last = false;
  for (const pipeline::StageChunk& chunk : chunks) {
    first = first || chunk.first;
    last = last || chunk.last;
    for (int64_t i = 0; i < chunk.layers.count; ++i) {
      const int64_t layer = chunk.layers.first + i;
      const metrics::LayerParameterCounts counts = metrics::CountLayerParameters(c, layer);
      p.dense += static_cast<double>(counts.tp_split) / tp + static_cast<double>(counts.replicated);
      p.experts += static_cast<double>(counts.routed_experts) / (ep * tp);
      p.adapters += LayerAdapterParams(c, recipe, layer);
    }
  }
  const double embedding = static_cast<double>(metrics::EmbeddingParameters(c)) / tp;
  if (first) p.dense += embedding;
  if (last) {
    // lm_head, or under pp the tied embedding's copy on the last stage.
    if (!c.tie_word_embeddings || (pipelined && !first)) p.dense += embedding;
    p.dense += static_cast<double>(c.hidden_size);
    const Shape sh = ShapeOf(recipe);
    if (sh.Adapted("lm_head")) {
      p.adapters +=
          AdapterParams(static_cast<double>(c.hidden_size), static_cast<double>(c.vocab_size),
                        Split::kColumn, sh.lora_rank, tp);
    }
  }
  return p;
}

// (micro-batch, chunk) pairs each stage holds at once under the recipe's
// schedule, from the schedule itself (parallel/pipeline's simulator).
absl::StatusOr<std::vector<int>> InFlightPerStage(const recipe::Recipe& recipe) {
  const recipe::ParallelSection& par = recipe.parallel;
  if (par.pp == 1) return std::vector<int>{1};
  FULCRUM_ASSIGN_OR_RETURN(const pipeline::ScheduleKind kind,
                           pipeline::ParseScheduleKind(par.pp_schedule));
  pipeline::ScheduleShape shape;
  shape.stages = static_cast<int>(par.pp);
  shape.micro_batches = static_cast<int>(recipe::GradAccumulationSteps(recipe.batch, par.dp));
  shape.virtual_stages = static_cast<int>(par.pp_virtual);
  FULCRUM_ASSIGN_OR_RETURN(const pipeline::Schedule schedule, pipeline::BuildSchedule(kind, shape));
  FULCRUM_ASSIGN_OR_RETURN(const pipeline::Simulation sim, pipeline::SimulateSchedule(schedule));
  std::vector<int> out;
  for (const pipeline::SimulatedStage& stage : sim.stages) out.push_back(stage.max_in_flight);
  return out;
}

// Buffers the layout's communication holds: ZeRO-1's reduce-scatter chunks
// (gradients / dp), one dp bucket in flight in the reduction, the tp/sp
// gathered activations, the pp receive buffers (an activation and a
// gradient), the MoE all-to-all's send and receive buffers.
double CommunicationBytes(const models::ModelConfig& c, const recipe::Recipe& recipe,
                          double dense_grad_bytes, double expert_grad_bytes) {
  const recipe::ParallelSection& par = recipe.parallel;
  const Shape sh = ShapeOf(recipe);
  const double h = static_cast<double>(c.hidden_size);
  double bytes = 0;
  if (par.dp > 1) {
    const double grads = dense_grad_bytes + expert_grad_bytes;
    bytes += std::min(grads, par.bucket_mb * 1024 * 1024);
    if (par.zero == 1) {
      const double expert_dp = static_cast<double>(par.dp / par.ep);
      bytes += dense_grad_bytes / static_cast<double>(par.dp) +
               (expert_dp > 1 ? expert_grad_bytes / expert_dp : 0.0);
    }
  }
  if (par.tp > 1) bytes += 2 * sh.n * h * sh.s;
  if (par.pp > 1) bytes += 2 * sh.n_norm * h * sh.s;
  if (par.ep > 1 && c.moe.enabled()) {
    bytes += 2 * sh.n * static_cast<double>(c.moe.experts_per_token) * h * sh.s;
  }
  return bytes;
}

}  // namespace

MemoryOptions MemoryOptionsFor(const std::string& device) {
  constexpr double kMiB = 1024.0 * 1024.0;
  MemoryOptions options;
  if (device == "cuda") {
    options.cuda = true;
    options.runtime_bytes = 1024 * kMiB;
    options.transient_factor = 1.1;
  } else {
    // Fitted to scripts/bench_plan.sh's 14 measured layouts, with large
    // tensors in the caching host allocator (parallel/runtime).
    options.runtime_bytes = 220 * kMiB;
    options.transient_factor = 1.2;
  }
  return options;
}

std::string RecomputeMode(const recipe::Recipe& recipe) { return recipe.train.recompute; }

double ActivationBytes(const models::ModelConfig& c, const recipe::Recipe& recipe,
                       const std::string& recompute, int64_t layer) {
  const Shape sh = ShapeOf(recipe);
  const double h = static_cast<double>(c.hidden_size);
  // Full recomputation keeps the layer's input only.
  if (recompute == "full") return sh.n_norm * h * sh.s;
  double bytes = 2 * sh.Norm(sh.n_norm, h);  // input_layernorm, post_attention_layernorm
  bytes += c.mla.enabled() ? LatentAttentionBytes(c, sh) : DenseAttentionBytes(c, sh);
  if (models::IsMoeLayer(c, layer)) return bytes + MoeBytes(c, sh);
  return bytes + SwiGluBytes(sh, h, static_cast<double>(c.intermediate_size) / sh.tp, sh.n,
                             "gate_proj", "up_proj", "down_proj",
                             /*input_counted=*/sh.norm_recomputed);
}

absl::StatusOr<MemoryPlan> PlanMemory(const models::ModelConfig& c, const recipe::Recipe& recipe,
                                      const MemoryOptions& options) {
  const recipe::ParallelSection& par = recipe.parallel;
  const std::string recompute = RecomputeMode(recipe);
  FULCRUM_ASSIGN_OR_RETURN(
      const pipeline::StagePartition partition,
      pipeline::StagePartition::Create(c.num_layers, static_cast<int>(par.pp),
                                       static_cast<int>(par.pp_virtual), par.pp_layers));
  FULCRUM_ASSIGN_OR_RETURN(const std::vector<int> in_flight, InFlightPerStage(recipe));
  const Shape sh = ShapeOf(recipe);
  const bool full = recipe.finetune.method != "lora";
  const bool zero = par.zero == 1 && par.dp > 1;
  // AdamW: two fp32 moments, plus an fp32 master of a 16-bit weight.
  const double adam = 2 * kFloat + (sh.s < kFloat ? kFloat : 0.0);
  const double dense_shards = zero ? static_cast<double>(par.dp) : 1.0;
  const double expert_shards =
      zero ? static_cast<double>(std::max<int64_t>(1, par.dp / par.ep)) : 1.0;
  MemoryPlan plan;
  for (int stage = 0; stage < static_cast<int>(par.pp); ++stage) {
    const std::vector<pipeline::StageChunk> chunks = partition.ChunksOf(stage);
    const StageParams params = CountStageParams(c, recipe, chunks);
    StageMemory m;
    m.stage = stage;
    m.in_flight = in_flight[static_cast<size_t>(stage)];
    bool last = false;
    double layer_bytes = 0, backward = 0;
    for (const pipeline::StageChunk& chunk : chunks) {
      last = last || chunk.last;
      for (int64_t i = 0; i < chunk.layers.count; ++i) {
        const int64_t layer = chunk.layers.first + i;
        layer_bytes += ActivationBytes(c, recipe, recompute, layer);
        backward =
            std::max(backward, LayerBackwardBytes(c, recipe, recompute, layer, options.cuda));
      }
      m.layers += chunk.layers.count;
    }
    m.layer_activations = m.layers > 0 ? layer_bytes / static_cast<double>(m.layers) : 0.0;
    MemoryBreakdown& b = m.bytes;
    b.parameters = (params.dense + params.experts) * sh.s;
    m.trainable_params = full ? params.dense + params.experts : params.adapters;
    if (full) {
      b.gradients = b.parameters;
      b.optimizer = adam * (params.dense / dense_shards + params.experts / expert_shards);
    }
    // Adapters: weight and gradient in the model's dtype, AdamW state sharded by ZeRO-1.
    b.lora = params.adapters * (2 * sh.s + adam / dense_shards);
    // A chunk's layers hold the activations of each of its in-flight micro-batches.
    const double per_chunk = layer_bytes / static_cast<double>(chunks.size());
    const double heap = options.transient_factor;
    b.activations = heap * static_cast<double>(m.in_flight) *
                    (per_chunk + SharedPerMicroBatchBytes(c, recipe, recompute));
    // The loss's own peak, or a layer's backward; the micro-batches still
    // waiting for their backward (GPipe's) keep what their loss kept.
    b.loss = heap * (last ? std::max(LossBytes(c, recipe, options.cuda), backward) +
                                static_cast<double>(m.in_flight - 1) * LossKeptBytes(c, recipe)
                          : backward);
    b.communication = heap * CommunicationBytes(c, recipe, full ? params.dense * sh.s : 0.0,
                                                full ? params.experts * sh.s : 0.0);
    b.runtime = options.runtime_bytes;
    plan.stages.push_back(m);
    if (b.total() > plan.worst_stage().bytes.total() || stage == 0) plan.worst = stage;
  }
  return plan;
}

std::string FormatBytes(double bytes) {
  constexpr double kMiB = 1024.0 * 1024.0, kGiB = 1024.0 * kMiB;
  if (bytes >= kGiB) return absl::StrFormat("%.2f GiB", bytes / kGiB);
  return absl::StrFormat("%.1f MiB", bytes / kMiB);
}

absl::Status CheckMemoryFits(const MemoryPlan& plan, const models::ModelConfig& config,
                             const recipe::Recipe& recipe, double available_bytes,
                             const std::string& available_from) {
  if (available_bytes <= 0 || plan.peak_bytes() <= available_bytes) return absl::OkStatus();
  const recipe::ParallelSection& par = recipe.parallel;
  const StageMemory& worst = plan.worst_stage();
  const MemoryBreakdown& b = worst.bytes;
  std::string layout = absl::StrFormat(
      "parallel.tp=%d, parallel.pp=%d (%s), parallel.dp=%d, parallel.ep=%d, parallel.zero=%d, "
      "batch.micro_batch=%d, batch.seq_len=%d, recompute %s",
      par.tp, par.pp, par.pp > 1 ? par.pp_schedule : "no pipeline", par.dp, par.ep, par.zero,
      recipe.batch.micro_batch, recipe.batch.seq_len, RecomputeMode(recipe));
  const metrics::ParameterCounts counts = metrics::CountParameters(config);
  if (counts.routed_experts > 0) {
    absl::StrAppendFormat(
        &layout, "; %.3g of %.3g routed-expert parameters per rank at ep=%d",
        static_cast<double>(counts.routed_experts) / static_cast<double>(par.ep * par.tp * par.pp),
        static_cast<double>(counts.routed_experts), par.ep);
  }
  const bool lora = recipe.finetune.method == "lora";
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: parallel: this layout needs about %s per rank (pipeline stage %d of %d: parameters "
      "%s, gradients %s, optimizer state %s, LoRA %s, activations %s of %d in-flight "
      "micro-batch(es), loss/backward %s, communication %s, runtime %s; %s), more than the %s "
      "available to each rank (%s): raise %sparallel.tp, parallel.pp%s, lower "
      "batch.micro_batch",
      recipe.source.empty() ? "recipe" : recipe.source, FormatBytes(plan.peak_bytes()), worst.stage,
      par.pp, FormatBytes(b.parameters), FormatBytes(b.gradients), FormatBytes(b.optimizer),
      FormatBytes(b.lora), FormatBytes(b.activations), worst.in_flight, FormatBytes(b.loss),
      FormatBytes(b.communication), FormatBytes(b.runtime), layout, FormatBytes(available_bytes),
      available_from, counts.routed_experts > 0 ? "parallel.ep, " : "",
      lora ? "" : ", set parallel.zero: 1, or fine-tune with finetune.method: lora"));
}

}  // namespace fulcrum::plan
