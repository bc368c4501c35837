// The time of one optimizer step of a layout, predicted from the model's
// FLOPs, the layout's communication and the optimizer's memory traffic:
//
//   step = compute of the slowest stage + tp + ep + pp transfers + latency
//          + bubble + dp reduction + optimizer
//
// compute: training FLOPs per token (metrics/flops.h, from the config's
// parameter counts: the top-k experts a token visits, LoRA's frozen base at 4
// FLOPs per weight), plus the forwards recomputation repeats, over the ranks,
// at `efficiency` of the per-rank peak. Communication: bytes leaving a rank
// over the bandwidth of the link its group spans (inside a node when the
// group's ranks fit in gpus_per_node; tp is the fastest axis, then dp, then
// pp): tp all-reduces of [B, T, hidden] 4 per layer per micro-batch (sp: 10
// gathers and reduce-scatters, 2 of them backward's gathers of the column
// groups' input again), less the column groups' backward reductions and
// gathers where the backend overlaps them with GEMMs (all of them hidden:
// their GEMMs are the layer's largest), ep all-to-alls of the k routed copies 4 per MoE layer,
// pp sends of one activation and one gradient per micro-batch, the dp ring
// all-reduce (or ZeRO-1 reduce-scatter + all-gather) of the gradients, each
// 2 (n-1)/n of the bytes. Latency: each blocking collective inside the
// step (tp, sp, ep, pp; the dp reduction overlaps the backward) costs
// `collective_latency_s` on top of its bytes. Optimizer: AdamW's pass over
// the states of the parameters the rank updates (1/dp of them under ZeRO-1)
// at `memory_bytes_per_s`. MoE layers: beyond their FLOPs, `moe_row_s` per
// routed row (a token's choice of an expert; every capacity slot when
// padded) for the dispatch's gathers and scatters and the per-expert calls
// (moe_overhead.h). Pipeline stages: each rank computes its own
// layers (the last stage also lm_head, which in a Llama of few layers costs
// more than several of them), and the slowest stage paces the steady state;
// bubble: the schedule's textbook fraction (parallel/pipeline/
// schedule_simulator.h) of the average stage's time, so that
// parallel.pp_layers that balance the stages show their gain.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/metrics/flops.h"
#include "trainer/models/model_config.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::plan {

// The machines a layout runs on; per rank (one GPU, or one CPU rank).
struct Hardware {
  int64_t ranks = 1;                  // GPUs (or CPU ranks) in all
  int64_t ranks_per_node = 1;         // GPUs per node
  double memory_bytes = 0;            // per rank
  double peak_flops = 0;              // per rank, in the training dtype
  double intra_node_bytes_per_s = 0;  // per rank, inside a node (NVLink; shared memory)
  double inter_node_bytes_per_s = 0;  // per rank, between nodes (IB/RoCE)
  double efficiency = 0.5;            // achieved matmul FLOP/s over the peak
  double memory_bytes_per_s = 0;      // per rank (HBM; host memory); 0 = no optimizer term
  // The cost of one blocking collective beyond its bytes: the link's
  // latency, and the wait for the slowest rank of the group.
  double collective_latency_s = 0;
  // The backend moves data while the rank computes (NCCL on its own
  // stream): the tp collectives that backward's column groups launch before
  // their GEMMs (lora/column_group.h) hide behind those GEMMs. MPI on the
  // CPU moves data inside Wait() only.
  bool overlaps_communication = false;
  // A MoE layer's forward and backward per routed row beyond its FLOPs
  // (moe_overhead.h measures it at the recipe's layout; --search applies
  // the same figure to every layout, scaled by its rows).
  double moe_row_s = 0;
};

struct StepTime {
  double flops_per_token = 0;  // model FLOPs of training one token (recomputation included)
  double compute_s = 0;        // per rank of the slowest pipeline stage
  std::vector<double> stage_compute_s;  // per rank of each pipeline stage, MoE rows included
  double moe_rows = 0;  // routed rows per step on a rank of the slowest stage (x moe_row_s in
                        // compute_s)
  double tp_comm_s = 0;
  double ep_comm_s = 0;
  double pp_comm_s = 0;
  double dp_comm_s = 0;
  double blocking_collectives = 0;  // per step on a rank of the worst stage
  double latency_s = 0;             // blocking_collectives x collective_latency_s
  double optimizer_s = 0;
  double bubble_fraction = 0;  // idle share of the pipeline's makespan
  double step_s = 0;
  double tokens_per_s = 0;  // all ranks together
};

// Whether the recipe's MoE layers send capacity slots (moe.pad_to_capacity
// with a capacity): the experts then multiply capacity_factor x N x k rows
// and no count is exchanged.
bool PaddedToCapacity(const recipe::Recipe& recipe);

// FLOPs model of the whole model as `recipe` trains it (full or LoRA).
metrics::FlopsModel FlopsModelFor(const models::ModelConfig& config, const recipe::Recipe& recipe);

// Errors: a pipeline shape the schedule refuses.
absl::StatusOr<StepTime> EstimateStepTime(const models::ModelConfig& config,
                                          const recipe::Recipe& recipe, const Hardware& hardware);

}  // namespace fulcrum::plan
