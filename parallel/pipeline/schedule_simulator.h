// Runs a Schedule's action lists without ranks, as PipelineExecutor would
// (the communication contract of schedule.h), to prove a schedule correct
// and to compute its ideal timing.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "parallel/pipeline/schedule.h"

namespace fulcrum::parallel::pipeline {

// Time units per action on any stage; communication costs nothing.
struct ActionCosts {
  double forward = 1.0;
  double backward = 2.0;        // whole backward = input + weight
  double backward_input = 1.0;  // zero-bubble split
  double backward_weight = 1.0;
};

struct SimulatedAction {
  Action action;
  double start = 0.0;
  double end = 0.0;
};

struct SimulatedStage {
  std::vector<SimulatedAction> compute;  // compute actions with their times
  double busy = 0.0;                     // sum of compute durations
  // Most micro-batch chunks whose forward ran and whose activations are not
  // yet released (after the backward, or after the weight phase when split).
  int max_in_flight = 0;
};

struct Simulation {
  double makespan = 0.0;  // last compute end over all stages
  std::vector<SimulatedStage> stages;
  // Mean over stages of (makespan - busy) / makespan: the idle share.
  double bubble_fraction = 0.0;
};

// Errors name the stage and the action: every (micro-batch, chunk) must be
// forwarded exactly once and backed exactly once (whole, or input then
// weight) after its forward on every stage; a compute that needs a received
// tensor must come after its receive; the k-th send and the k-th receive of
// a channel between two stages must carry the same (micro-batch, virtual
// stage); no send or receive may be left unmatched; and the lists must run
// to the end (a deadlock names the stages and the actions they wait at).
absl::StatusOr<Simulation> SimulateSchedule(const Schedule& schedule,
                                            const ActionCosts& costs = {});
// The same with each stage's own costs (stages differ in work, e.g. the
// first computes no input gradient); one entry per stage.
absl::StatusOr<Simulation> SimulateSchedule(const Schedule& schedule,
                                            const std::vector<ActionCosts>& stage_costs);

// The textbook bubble fraction of `kind` for equal stage costs:
// (p-1)/(m+p-1) for 1f1b and for gpipe (with v chunks looped breadth-first:
// 1 - m v / ((v-1) max(m, p) + m + p - 1)), (p-1)/(v m+p-1) for interleaved 1f1b,
// and for zb_h1 (p-1)(F+B-W) / (m(F+B+W) + (p-1)(F+B-W)) with B the input
// part and W the weight part of the backward (Qi et al., "Zero Bubble
// Pipeline Parallelism", 2023: a third of 1F1B's bubble when F = B = W).
double TheoreticalBubbleFraction(ScheduleKind kind, const ScheduleShape& shape,
                                 const ActionCosts& costs = {});

}  // namespace fulcrum::parallel::pipeline
