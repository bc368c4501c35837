// Pipeline schedules as data.
//
// A schedule is, for every stage, the ordered list of actions that stage runs
// in one optimizer step: compute actions (forward, backward, or zero-bubble's
// split backward) on (micro-batch, local chunk), and the point-to-point
// actions that move activations forward and gradients backward between the
// stages holding consecutive virtual stages (stage_partition.h). Adding a
// schedule means writing a generator of compute orders; AddCommunication
// inserts the sends and receives the same way for all of them, and
// schedule_simulator.h checks any schedule without ranks.
//
// Communication contract (what PipelineExecutor does and the simulator
// models): sends never block the sender; a receive is posted where its action
// stands and the compute that consumes it waits for it. Activations and
// gradients travel on two separate channels; on each channel the k-th send
// from stage a to stage b matches the k-th receive b posts from a (MPI and
// NCCL both match point-to-point messages in order per peer).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::parallel::pipeline {

enum class ScheduleKind {
  kGPipe,            // "gpipe": all forwards, then all backwards (chunks looped breadth-first)
  kOneFOneB,         // "1f1b": warm-up forwards, then one forward / one backward
  kInterleaved1F1B,  // "interleaved_1f1b": 1F1B over virtual stages (Megatron)
  kZeroBubbleH1,     // "zb_h1": 1F1B with split backward, weight gradients deferred into bubbles
};

// "gpipe" | "1f1b" | "interleaved_1f1b" | "zb_h1"; the error lists them.
absl::StatusOr<ScheduleKind> ParseScheduleKind(std::string_view name);
const char* ScheduleName(ScheduleKind kind);

enum class ActionType {
  kForward,         // the chunk's forward of the micro-batch
  kBackward,        // its whole backward (input and weight gradients)
  kBackwardInput,   // zero-bubble: the input gradient only (what the previous stage waits for)
  kBackwardWeight,  // zero-bubble: the weight gradients, deferred
  kRecvActivation,  // post the receive of the chunk's input (from virtual stage - 1)
  kSendActivation,  // send the chunk's output (to virtual stage + 1)
  kRecvGrad,        // post the receive of the gradient of the chunk's output (from vs + 1)
  kSendGrad,        // send the gradient of the chunk's input (to vs - 1)
};

struct Action {
  ActionType type = ActionType::kForward;
  int micro_batch = 0;
  int chunk = 0;  // local chunk index on the stage, 0..virtual_stages-1
};
bool operator==(const Action& a, const Action& b);
inline bool operator!=(const Action& a, const Action& b) { return !(a == b); }
// Compact form for messages and tests: "F3.1" (forward of micro-batch 3 on
// chunk 1), "B", "Bi", "W", "RA", "SA", "RG", "SG".
std::string ToString(const Action& action);

struct ScheduleShape {
  int stages = 1;          // pp
  int micro_batches = 1;   // per step and dp rank
  int virtual_stages = 1;  // chunks per stage
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::kOneFOneB;
  ScheduleShape shape;
  std::vector<std::vector<Action>> stages;  // [stage] -> actions in execution order
};

// Whether `kind` can run `shape`. User-facing messages (the caller adds the
// recipe file): 1f1b/zb_h1 need virtual_stages == 1 (gpipe takes any); interleaved_1f1b
// needs virtual_stages >= 2 and micro_batches divisible by stages; 1f1b,
// interleaved_1f1b and zb_h1 need micro_batches >= stages (fewer leave a
// stage with nothing to overlap).
absl::Status CheckScheduleShape(ScheduleKind kind, const ScheduleShape& shape);

// The schedule with its communication actions (CheckScheduleShape first).
absl::StatusOr<Schedule> BuildSchedule(ScheduleKind kind, const ScheduleShape& shape);

// Compute-only per-stage orders -> the same with sends and receives: a send
// right after the compute that produces it; each receive posted one compute
// action ahead of the compute that consumes it, so that the transfer
// overlaps that compute (at the start of the list when there is none).
std::vector<std::vector<Action>> AddCommunication(const ScheduleShape& shape,
                                                  std::vector<std::vector<Action>> compute);

}  // namespace fulcrum::parallel::pipeline
