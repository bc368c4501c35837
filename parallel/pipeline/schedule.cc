#include "parallel/pipeline/schedule.h"

#include <algorithm>
#include <array>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"

namespace fulcrum::parallel::pipeline {
namespace {

struct KindName {
  ScheduleKind kind;
  const char* name;
};
constexpr std::array<KindName, 4> kKindNames = {{
    {ScheduleKind::kGPipe, "gpipe"},
    {ScheduleKind::kOneFOneB, "1f1b"},
    {ScheduleKind::kInterleaved1F1B, "interleaved_1f1b"},
    {ScheduleKind::kZeroBubbleH1, "zb_h1"},
}};

// How the micro-batches are counted in the recipe, for the messages.
constexpr const char* kMicroBatchesHow =
    "micro-batches per step (batch.global_batch / (batch.micro_batch x dp))";

Action Compute(ActionType type, int micro_batch, int chunk = 0) {
  return Action{type, micro_batch, chunk};
}

// GPipe: all forwards, then all backwards, in micro-batch order on every
// stage (the same order everywhere keeps the channels' FIFO order). With
// virtual stages it loops breadth-first: every micro-batch through chunk 0,
// then chunk 1, ...; backwards from the last chunk down.
std::vector<Action> GPipeOrder(const ScheduleShape& shape) {
  std::vector<Action> order;
  for (int c = 0; c < shape.virtual_stages; ++c) {
    for (int mb = 0; mb < shape.micro_batches; ++mb)
      order.push_back(Compute(ActionType::kForward, mb, c));
  }
  for (int c = shape.virtual_stages - 1; c >= 0; --c) {
    for (int mb = 0; mb < shape.micro_batches; ++mb)
      order.push_back(Compute(ActionType::kBackward, mb, c));
  }
  return order;
}

// 1F1B (PipeDream-flush): p - s - 1 warm-up forwards, then one forward / one
// backward, then the remaining backwards. At most p - s micro-batches in flight.
std::vector<Action> OneFOneBOrder(const ScheduleShape& shape, int stage) {
  const int m = shape.micro_batches;
  const int warmup = std::min(shape.stages - stage - 1, m);
  std::vector<Action> order;
  int forward = 0;
  for (; forward < warmup; ++forward) order.push_back(Compute(ActionType::kForward, forward));
  for (int backward = 0; backward < m; ++backward) {
    if (forward < m) order.push_back(Compute(ActionType::kForward, forward++));
    order.push_back(Compute(ActionType::kBackward, backward));
  }
  return order;
}

// Megatron's interleaved 1F1B over virtual micro-steps k = 0..m v - 1: the
// micro-batches go in groups of p, each group through chunk 0, then chunk 1,
// ... for the forwards (and chunk v-1 down to 0 for the backwards). The same
// k -> (micro-batch, chunk) order on every stage keeps the FIFO order of every
// channel, including the wrap from stage p-1 chunk c to stage 0 chunk c+1.
Action InterleavedStep(const ScheduleShape& shape, int k, bool forward) {
  const int p = shape.stages;
  const int v = shape.virtual_stages;
  const int micro_batch = (k / (p * v)) * p + k % p;
  const int chunk = forward ? (k / p) % v : v - 1 - (k / p) % v;
  return Compute(forward ? ActionType::kForward : ActionType::kBackward, micro_batch, chunk);
}

std::vector<Action> InterleavedOrder(const ScheduleShape& shape, int stage) {
  const int p = shape.stages;
  const int total = shape.micro_batches * shape.virtual_stages;
  // Warm-up: enough forwards that the first backward's gradient has had time
  // to come back through every chunk (Megatron's formula).
  const int warmup = std::min((p - stage - 1) * 2 + (shape.virtual_stages - 1) * p, total);
  std::vector<Action> order;
  int forward = 0;
  for (; forward < warmup; ++forward) order.push_back(InterleavedStep(shape, forward, true));
  for (int backward = 0; backward < total; ++backward) {
    if (forward < total) order.push_back(InterleavedStep(shape, forward++, true));
    order.push_back(InterleavedStep(shape, backward, false));
  }
  return order;
}

// ZB-H1 (Qi et al. 2023): 1F1B's order with the backward split into the
// input gradient Bi (which the previous stage waits for) and the weight
// gradient W (which nobody waits for). Stage s holds back s weight passes: W
// of micro-batch j runs after Bi of micro-batch j + s, and the last s + 1 W's
// close the list. The late stages, idle at the start of 1F1B, thereby run
// their Bi's (and so release the earlier stages' Bi's) sooner, and the early
// stages fill the cool-down waits with W's. In flight (forward done, W not
// done) is at most p on every stage: 1F1B's bound of stage 0.
//
// Why it meets (p-1)(F+B-W) + m(F+B+W) when F = B = W: the last stage starts
// after p-1 forwards and never idles (Bi's arrive as fast as it runs); after
// its last Bi it still has p W's, exactly the p-1 Bi's that carry the last
// gradient back to stage 0 plus stage 0's final W. Every stage s ends the same
// way: its last Bi is followed by s + 1 W's.
std::vector<Action> ZeroBubbleH1Order(const ScheduleShape& shape, int stage) {
  const int m = shape.micro_batches;
  const int warmup = std::min(shape.stages - stage - 1, m);
  std::vector<Action> order;
  std::deque<int> pending_weight;  // micro-batches whose Bi ran and W not yet
  int forward = 0;
  for (; forward < warmup; ++forward) order.push_back(Compute(ActionType::kForward, forward));
  for (int backward = 0; backward < m; ++backward) {
    if (forward < m) order.push_back(Compute(ActionType::kForward, forward++));
    order.push_back(Compute(ActionType::kBackwardInput, backward));
    pending_weight.push_back(backward);
    if (static_cast<int>(pending_weight.size()) > stage) {
      order.push_back(Compute(ActionType::kBackwardWeight, pending_weight.front()));
      pending_weight.pop_front();
    }
  }
  for (int mb : pending_weight) order.push_back(Compute(ActionType::kBackwardWeight, mb));
  return order;
}

// The receive a compute needs before it runs and the send it makes after;
// has_recv / has_send are false where the virtual stage has no such peer (the
// first virtual stage receives no activation, the last sends none; the
// reverse for gradients).
struct Transfers {
  bool has_recv = false;
  Action recv;
  bool has_send = false;
  Action send;
};

Transfers TransfersOf(const ScheduleShape& shape, int stage, const Action& compute) {
  const int virtual_stage = compute.chunk * shape.stages + stage;
  const bool first = virtual_stage == 0;
  const bool last = virtual_stage == shape.stages * shape.virtual_stages - 1;
  Transfers t;
  auto make = [&](ActionType type) { return Action{type, compute.micro_batch, compute.chunk}; };
  switch (compute.type) {
    case ActionType::kForward:
      t = {!first, make(ActionType::kRecvActivation), !last, make(ActionType::kSendActivation)};
      break;
    case ActionType::kBackward:
    case ActionType::kBackwardInput:
      t = {!last, make(ActionType::kRecvGrad), !first, make(ActionType::kSendGrad)};
      break;
    default:
      break;  // the weight pass neither needs nor produces a transfer
  }
  return t;
}

}  // namespace

absl::StatusOr<ScheduleKind> ParseScheduleKind(std::string_view name) {
  std::vector<std::string> names;
  for (const KindName& entry : kKindNames) {
    if (name == entry.name) return entry.kind;
    names.push_back(entry.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown pipeline schedule \"", std::string(name),
                                                 "\"; valid: ", absl::StrJoin(names, ", ")));
}

const char* ScheduleName(ScheduleKind kind) {
  for (const KindName& entry : kKindNames) {
    if (entry.kind == kind) return entry.name;
  }
  FULCRUM_CHECK(false, "unknown ScheduleKind ", static_cast<int>(kind));
  return "";
}

bool operator==(const Action& a, const Action& b) {
  return a.type == b.type && a.micro_batch == b.micro_batch && a.chunk == b.chunk;
}

std::string ToString(const Action& action) {
  const char* prefix = "";
  switch (action.type) {
    case ActionType::kForward:
      prefix = "F";
      break;
    case ActionType::kBackward:
      prefix = "B";
      break;
    case ActionType::kBackwardInput:
      prefix = "Bi";
      break;
    case ActionType::kBackwardWeight:
      prefix = "W";
      break;
    case ActionType::kRecvActivation:
      prefix = "RA";
      break;
    case ActionType::kSendActivation:
      prefix = "SA";
      break;
    case ActionType::kRecvGrad:
      prefix = "RG";
      break;
    case ActionType::kSendGrad:
      prefix = "SG";
      break;
  }
  return absl::StrCat(prefix, action.micro_batch, ".", action.chunk);
}

absl::Status CheckScheduleShape(ScheduleKind kind, const ScheduleShape& shape) {
  const char* name = ScheduleName(kind);
  if (shape.stages < 1 || shape.micro_batches < 1 || shape.virtual_stages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule ", name, ": parallel.pp (", shape.stages, "), the ",
                     kMicroBatchesHow, " (", shape.micro_batches, ") and parallel.pp_virtual (",
                     shape.virtual_stages, ") must all be >= 1"));
  }
  const bool interleaved = kind == ScheduleKind::kInterleaved1F1B;
  if (!interleaved && kind != ScheduleKind::kGPipe && shape.virtual_stages != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline schedule ", name, " runs one chunk per stage but parallel.pp_virtual is ",
        shape.virtual_stages, "; use interleaved_1f1b (or gpipe) for virtual stages"));
  }
  if (interleaved && shape.virtual_stages < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule interleaved_1f1b needs parallel.pp_virtual >= 2 (got ",
                     shape.virtual_stages, "); use 1f1b for one chunk per stage"));
  }
  if (kind != ScheduleKind::kGPipe && shape.micro_batches < shape.stages) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule ", name, " needs at least as many ", kMicroBatchesHow,
                     " as stages: ", shape.micro_batches, " < parallel.pp (", shape.stages,
                     "); fewer leave a stage with nothing to overlap"));
  }
  if (interleaved && shape.micro_batches % shape.stages != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule interleaved_1f1b runs the ", kMicroBatchesHow,
                     " in groups of parallel.pp: ", shape.micro_batches, " % ", shape.stages, " = ",
                     shape.micro_batches % shape.stages, ", must be 0"));
  }
  return absl::OkStatus();
}

std::vector<std::vector<Action>> AddCommunication(const ScheduleShape& shape,
                                                  std::vector<std::vector<Action>> compute) {
  std::vector<std::vector<Action>> out(compute.size());
  for (size_t stage = 0; stage < compute.size(); ++stage) {
    const std::vector<Action>& order = compute[stage];
    std::vector<Transfers> transfers;
    transfers.reserve(order.size());
    for (const Action& a : order)
      transfers.push_back(TransfersOf(shape, static_cast<int>(stage), a));
    std::vector<Action>& list = out[stage];
    for (size_t i = 0; i < order.size(); ++i) {
      // The receive of compute i + 1 is posted before compute i so that the
      // transfer overlaps it; compute 0's own receive opens the list.
      if (i == 0 && transfers[0].has_recv) list.push_back(transfers[0].recv);
      if (i + 1 < order.size() && transfers[i + 1].has_recv) list.push_back(transfers[i + 1].recv);
      list.push_back(order[i]);
      if (transfers[i].has_send) list.push_back(transfers[i].send);
    }
  }
  return out;
}

absl::StatusOr<Schedule> BuildSchedule(ScheduleKind kind, const ScheduleShape& shape) {
  FULCRUM_RETURN_IF_ERROR(CheckScheduleShape(kind, shape));
  std::vector<std::vector<Action>> compute(shape.stages);
  for (int stage = 0; stage < shape.stages; ++stage) {
    switch (kind) {
      case ScheduleKind::kGPipe:
        compute[stage] = GPipeOrder(shape);
        break;
      case ScheduleKind::kOneFOneB:
        compute[stage] = OneFOneBOrder(shape, stage);
        break;
      case ScheduleKind::kInterleaved1F1B:
        compute[stage] = InterleavedOrder(shape, stage);
        break;
      case ScheduleKind::kZeroBubbleH1:
        compute[stage] = ZeroBubbleH1Order(shape, stage);
        break;
    }
  }
  Schedule schedule;
  schedule.kind = kind;
  schedule.shape = shape;
  schedule.stages = AddCommunication(shape, std::move(compute));
  return schedule;
}

}  // namespace fulcrum::parallel::pipeline
