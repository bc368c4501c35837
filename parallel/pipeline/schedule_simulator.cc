#include "parallel/pipeline/schedule_simulator.h"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace fulcrum::parallel::pipeline {
namespace {

enum Channel { kActivations = 0, kGradients = 1 };
const char* ChannelName(int channel) { return channel == kActivations ? "activation" : "gradient"; }

// One end of a transfer, as posted on a channel. `label` is what travels:
// the micro-batch and the virtual stage that consumes it.
struct Endpoint {
  int stage = 0;
  int index = 0;  // position in the stage's action list
  Action action;
  int micro_batch = 0;
  int consumer_virtual_stage = 0;
  double time = 0.0;  // sends: when the data left (the producing compute's end)
};

struct ChannelState {
  std::vector<Endpoint> sends;
  std::vector<Endpoint> recvs;
};
using ChannelKey = std::tuple<int, int, int>;  // (src stage, dst stage, channel)

enum BackwardState { kNotStarted = 0, kInputDone = 1, kComplete = 2 };

struct StageState {
  size_t pc = 0;
  double clock = 0.0;
  int in_flight = 0;
  std::vector<std::vector<bool>> forwarded;  // [micro_batch][chunk]
  std::vector<std::vector<int>> backward;    // [micro_batch][chunk] -> BackwardState
  std::vector<std::vector<int>> sent[2];     // [channel][micro_batch][chunk] -> count
  // (channel, micro_batch, chunk) -> index of the posted receive in its
  // channel, and whether a compute consumed it.
  std::map<std::tuple<int, int, int>, std::pair<ChannelKey, size_t>> posted;
  std::map<std::tuple<int, int, int>, bool> consumed;
};

enum class StepResult { kAdvanced, kBlocked };

class Simulator {
 public:
  Simulator(const Schedule& schedule, std::vector<ActionCosts> costs)
      : schedule_(schedule), shape_(schedule.shape), costs_(std::move(costs)) {}

  absl::StatusOr<Simulation> Run();

 private:
  int VirtualStage(int stage, int chunk) const { return chunk * shape_.stages + stage; }
  int LastVirtualStage() const { return shape_.stages * shape_.virtual_stages - 1; }
  std::string Where(int stage, size_t index) const {
    return absl::StrCat("stage ", stage, " action ", index, " (",
                        ToString(schedule_.stages[stage][index]), ")");
  }

  absl::StatusOr<StepResult> Step(int stage);
  absl::Status Send(int stage, const Action& a, int channel);
  absl::Status Post(int stage, const Action& a, int channel);
  absl::Status CheckMatch(const ChannelKey& key, size_t k);
  absl::StatusOr<StepResult> RunCompute(int stage, const Action& a);
  absl::Status CheckFinished() const;
  std::string DeadlockMessage() const;

  const Schedule& schedule_;
  const ScheduleShape& shape_;
  std::vector<ActionCosts> costs_;  // per stage
  std::vector<StageState> state_;
  std::map<ChannelKey, ChannelState> channels_;
  Simulation sim_;
};

absl::StatusOr<Simulation> Simulator::Run() {
  const int p = shape_.stages;
  if (static_cast<int>(schedule_.stages.size()) != p) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule has ", schedule_.stages.size(), " stage lists for ", p, " stages"));
  }
  const int m = shape_.micro_batches;
  const int v = shape_.virtual_stages;
  state_.resize(p);
  sim_.stages.resize(p);
  for (StageState& s : state_) {
    s.forwarded.assign(m, std::vector<bool>(v, false));
    s.backward.assign(m, std::vector<int>(v, kNotStarted));
    for (auto& sent : s.sent) sent.assign(m, std::vector<int>(v, 0));
  }
  // Run every stage as far as it can until none can move: the times do not
  // depend on this order, only on each stage's clock and the send times.
  bool progress = true;
  while (progress) {
    progress = false;
    for (int stage = 0; stage < p; ++stage) {
      while (state_[stage].pc < schedule_.stages[stage].size()) {
        FULCRUM_ASSIGN_OR_RETURN(StepResult result, Step(stage));
        if (result == StepResult::kBlocked) break;
        ++state_[stage].pc;
        progress = true;
      }
    }
  }
  for (int stage = 0; stage < p; ++stage) {
    if (state_[stage].pc < schedule_.stages[stage].size()) {
      return absl::FailedPreconditionError(DeadlockMessage());
    }
  }
  FULCRUM_RETURN_IF_ERROR(CheckFinished());
  for (const SimulatedStage& s : sim_.stages) {
    if (!s.compute.empty()) sim_.makespan = std::max(sim_.makespan, s.compute.back().end);
  }
  if (sim_.makespan > 0.0) {
    double idle = 0.0;
    for (const SimulatedStage& s : sim_.stages) idle += (sim_.makespan - s.busy) / sim_.makespan;
    sim_.bubble_fraction = idle / p;
  }
  return sim_;
}

absl::StatusOr<StepResult> Simulator::Step(int stage) {
  const size_t index = state_[stage].pc;
  const Action& a = schedule_.stages[stage][index];
  if (a.micro_batch < 0 || a.micro_batch >= shape_.micro_batches || a.chunk < 0 ||
      a.chunk >= shape_.virtual_stages) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(stage, index), ": micro-batch or chunk out of range (",
                     shape_.micro_batches, " micro-batches, ", shape_.virtual_stages, " chunks)"));
  }
  absl::Status status;
  switch (a.type) {
    case ActionType::kSendActivation:
      status = Send(stage, a, kActivations);
      break;
    case ActionType::kSendGrad:
      status = Send(stage, a, kGradients);
      break;
    case ActionType::kRecvActivation:
      status = Post(stage, a, kActivations);
      break;
    case ActionType::kRecvGrad:
      status = Post(stage, a, kGradients);
      break;
    default:
      return RunCompute(stage, a);
  }
  if (!status.ok()) return Annotate(status, Where(stage, index));
  return StepResult::kAdvanced;
}

absl::Status Simulator::Send(int stage, const Action& a, int channel) {
  StageState& s = state_[stage];
  const int vs = VirtualStage(stage, a.chunk);
  const bool activation = channel == kActivations;
  if (activation ? vs == LastVirtualStage() : vs == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "virtual stage ", vs, " has no ", activation ? "next" : "previous", " stage to send to"));
  }
  const bool produced = activation ? s.forwarded[a.micro_batch][a.chunk]
                                   : s.backward[a.micro_batch][a.chunk] != kNotStarted;
  if (!produced) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sends before the ", activation ? "forward" : "backward", " that produces it ran"));
  }
  if (s.sent[channel][a.micro_batch][a.chunk]++ > 0) {
    return absl::InvalidArgumentError("sends the same tensor twice");
  }
  const int consumer = activation ? vs + 1 : vs - 1;
  const ChannelKey key{stage, consumer % shape_.stages, channel};
  ChannelState& c = channels_[key];
  c.sends.push_back(Endpoint{stage, static_cast<int>(s.pc), a, a.micro_batch, consumer, s.clock});
  return CheckMatch(key, c.sends.size() - 1);
}

absl::Status Simulator::Post(int stage, const Action& a, int channel) {
  StageState& s = state_[stage];
  const int vs = VirtualStage(stage, a.chunk);
  const bool activation = channel == kActivations;
  if (activation ? vs == 0 : vs == LastVirtualStage()) {
    return absl::InvalidArgumentError(absl::StrCat("virtual stage ", vs, " has no ",
                                                   activation ? "previous" : "next",
                                                   " stage to receive from"));
  }
  const auto slot = std::make_tuple(channel, a.micro_batch, a.chunk);
  if (s.posted.count(slot) > 0) return absl::InvalidArgumentError("posts the same receive twice");
  const int producer = activation ? vs - 1 : vs + 1;
  const ChannelKey key{producer % shape_.stages, stage, channel};
  ChannelState& c = channels_[key];
  c.recvs.push_back(Endpoint{stage, static_cast<int>(s.pc), a, a.micro_batch, vs, 0.0});
  s.posted[slot] = {key, c.recvs.size() - 1};
  s.consumed[slot] = false;
  return CheckMatch(key, c.recvs.size() - 1);
}

// The k-th send and the k-th receive of a channel pair up (FIFO per peer);
// they must be about the same tensor.
absl::Status Simulator::CheckMatch(const ChannelKey& key, size_t k) {
  const ChannelState& c = channels_[key];
  if (k >= c.sends.size() || k >= c.recvs.size()) return absl::OkStatus();
  const Endpoint& send = c.sends[k];
  const Endpoint& recv = c.recvs[k];
  if (send.micro_batch == recv.micro_batch &&
      send.consumer_virtual_stage == recv.consumer_virtual_stage) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "message ", k, " on the ", ChannelName(std::get<2>(key)), " channel from stage ",
      std::get<0>(key), " to stage ", std::get<1>(key), " is ", Where(send.stage, send.index),
      " (micro-batch ", send.micro_batch, " for virtual stage ", send.consumer_virtual_stage,
      ") but the receive it matches is ", Where(recv.stage, recv.index), " (micro-batch ",
      recv.micro_batch, " for virtual stage ", recv.consumer_virtual_stage, ")"));
}

absl::StatusOr<StepResult> Simulator::RunCompute(int stage, const Action& a) {
  StageState& s = state_[stage];
  const std::string where = Where(stage, s.pc);
  const int vs = VirtualStage(stage, a.chunk);
  bool forwarded = s.forwarded[a.micro_batch][a.chunk];
  int& backward = s.backward[a.micro_batch][a.chunk];
  double cost = 0.0;
  int needs = -1;  // channel of the received input, -1: none
  switch (a.type) {
    case ActionType::kForward:
      if (forwarded) return absl::InvalidArgumentError(where + ": forward runs twice");
      cost = costs_[stage].forward;
      if (vs != 0) needs = kActivations;
      break;
    case ActionType::kBackward:
    case ActionType::kBackwardInput:
      if (!forwarded) return absl::InvalidArgumentError(where + ": backward before its forward");
      if (backward != kNotStarted)
        return absl::InvalidArgumentError(where + ": backward runs twice");
      cost =
          a.type == ActionType::kBackward ? costs_[stage].backward : costs_[stage].backward_input;
      if (vs != LastVirtualStage()) needs = kGradients;
      break;
    default:  // kBackwardWeight
      if (backward != kInputDone) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, backward == kComplete ? ": weight pass runs twice or after a whole backward"
                                         : ": weight pass before its input-gradient pass (Bi)"));
      }
      cost = costs_[stage].backward_weight;
      break;
  }
  double start = s.clock;
  if (needs >= 0) {
    const auto slot = std::make_tuple(needs, a.micro_batch, a.chunk);
    auto it = s.posted.find(slot);
    if (it == s.posted.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": needs a received ", ChannelName(needs), " but no ",
                       needs == kActivations ? "RA" : "RG", a.micro_batch, ".", a.chunk,
                       " was posted before it"));
    }
    const ChannelState& c = channels_[it->second.first];
    if (it->second.second >= c.sends.size()) return StepResult::kBlocked;
    start = std::max(start, c.sends[it->second.second].time);
    s.consumed[slot] = true;
  }
  if (a.type == ActionType::kForward) {
    s.forwarded[a.micro_batch][a.chunk] = true;
    ++s.in_flight;
  } else if (a.type == ActionType::kBackwardInput) {
    backward = kInputDone;
  } else {
    backward = kComplete;
    --s.in_flight;
  }
  s.clock = start + cost;
  SimulatedStage& out = sim_.stages[stage];
  out.compute.push_back(SimulatedAction{a, start, s.clock});
  out.busy += cost;
  out.max_in_flight = std::max(out.max_in_flight, s.in_flight);
  return StepResult::kAdvanced;
}

absl::Status Simulator::CheckFinished() const {
  for (const auto& [key, c] : channels_) {
    const auto& [src, dst, channel] = key;
    if (c.sends.size() > c.recvs.size()) {
      const Endpoint& e = c.sends[c.recvs.size()];
      return absl::InvalidArgumentError(absl::StrCat(Where(e.stage, e.index), ": its ",
                                                     ChannelName(channel), " send to stage ", dst,
                                                     " has no matching receive"));
    }
    if (c.recvs.size() > c.sends.size()) {
      const Endpoint& e = c.recvs[c.sends.size()];
      return absl::InvalidArgumentError(absl::StrCat(Where(e.stage, e.index), ": its ",
                                                     ChannelName(channel), " receive from stage ",
                                                     src, " has no matching send"));
    }
  }
  for (int stage = 0; stage < shape_.stages; ++stage) {
    const StageState& s = state_[stage];
    for (const auto& [slot, consumed] : s.consumed) {
      if (consumed) continue;
      const auto& [channel, mb, chunk] = slot;
      return absl::InvalidArgumentError(absl::StrCat(
          "stage ", stage, ": the ", ChannelName(channel), " received for micro-batch ", mb,
          " chunk ", chunk, " is used by no compute"));
    }
  }
  for (int stage = 0; stage < shape_.stages; ++stage) {
    const StageState& s = state_[stage];
    for (int mb = 0; mb < shape_.micro_batches; ++mb) {
      for (int chunk = 0; chunk < shape_.virtual_stages; ++chunk) {
        const Action f{ActionType::kForward, mb, chunk};
        if (!s.forwarded[mb][chunk]) {
          return absl::InvalidArgumentError(
              absl::StrCat("stage ", stage, ": ", ToString(f), " never runs"));
        }
        if (s.backward[mb][chunk] != kComplete) {
          const Action missing{s.backward[mb][chunk] == kInputDone ? ActionType::kBackwardWeight
                                                                   : ActionType::kBackward,
                               mb, chunk};
          return absl::InvalidArgumentError(
              absl::StrCat("stage ", stage, ": ", ToString(f), " has no ", ToString(missing)));
        }
      }
    }
  }
  return absl::OkStatus();
}

std::string Simulator::DeadlockMessage() const {
  std::vector<std::string> stuck;
  for (int stage = 0; stage < shape_.stages; ++stage) {
    const StageState& s = state_[stage];
    if (s.pc >= schedule_.stages[stage].size()) {
      stuck.push_back(absl::StrCat("stage ", stage, " finished"));
      continue;
    }
    const Action& a = schedule_.stages[stage][s.pc];
    const bool activation = a.type == ActionType::kForward;
    const int vs = VirtualStage(stage, a.chunk);
    const int peer = ((activation ? vs - 1 : vs + 1) + shape_.stages) % shape_.stages;
    stuck.push_back(absl::StrCat(Where(stage, s.pc), " waits for the ",
                                 ChannelName(activation ? kActivations : kGradients),
                                 " from stage ", peer));
  }
  return absl::StrCat("pipeline schedule deadlocks: ", absl::StrJoin(stuck, "; "));
}

}  // namespace

absl::StatusOr<Simulation> SimulateSchedule(const Schedule& schedule, const ActionCosts& costs) {
  return Simulator(schedule, std::vector<ActionCosts>(schedule.stages.size(), costs)).Run();
}

absl::StatusOr<Simulation> SimulateSchedule(const Schedule& schedule,
                                            const std::vector<ActionCosts>& stage_costs) {
  if (stage_costs.size() != schedule.stages.size()) {
    return absl::InvalidArgumentError(absl::StrCat("costs for ", stage_costs.size(),
                                                   " stages, but the schedule has ",
                                                   schedule.stages.size()));
  }
  return Simulator(schedule, stage_costs).Run();
}

double TheoreticalBubbleFraction(ScheduleKind kind, const ScheduleShape& shape,
                                 const ActionCosts& costs) {
  const double p = shape.stages;
  const double m = shape.micro_batches;
  switch (kind) {
    case ScheduleKind::kGPipe: {
      // Breadth-first over v chunks: a round of chunk c takes max(m, p)
      // before stage 0 can start chunk c + 1 (micro-batch 0 must wrap round).
      const double v = shape.virtual_stages;
      return 1.0 - m * v / ((v - 1) * std::max(m, p) + m + p - 1);
    }
    case ScheduleKind::kOneFOneB:
      return (p - 1) / (m + p - 1);
    case ScheduleKind::kInterleaved1F1B:
      return (p - 1) / (shape.virtual_stages * m + p - 1);
    case ScheduleKind::kZeroBubbleH1: {
      const double f = costs.forward;
      const double b = costs.backward_input;
      const double w = costs.backward_weight;
      const double bubble = (p - 1) * (f + b - w);
      return bubble / (m * (f + b + w) + bubble);
    }
  }
  return 0.0;
}

}  // namespace fulcrum::parallel::pipeline
