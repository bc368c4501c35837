// PipelineExecutor (see pipeline_executor.h).
//
// One Run() walks this stage's action list once. Per (micro-batch, chunk) it
// keeps a slot: the posted receives with their buffers, the chunk's input
// leaf and output (the activations held until the backward), and, under
// zero-bubble, the deferred weight phase. A slot counts as in flight from its
// forward until its backward (or, when split, its weight phase) has released
// the activations.
#include "parallel/pipeline/pipeline_executor.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <utility>

#include "core/check.h"
#include "parallel/pipeline/split_backward.h"

namespace fulcrum::parallel::pipeline {

namespace {

bool IsCompute(ActionType type) {
  return type == ActionType::kForward || type == ActionType::kBackward ||
         type == ActionType::kBackwardInput || type == ActionType::kBackwardWeight;
}

struct Slot {
  WorkHandle activation_recv;  // pending receive into `input`
  torch::Tensor input;         // received activation (leaf after the forward's wait)
  torch::Tensor output;        // chunk output or 0-dim loss, held until the backward
  WorkHandle grad_recv;        // pending receive into `grad_output`
  torch::Tensor grad_output;   // d loss / d output, shape of `output`
  torch::Tensor grad_input;    // d loss / d input, until sent
  DeferredWeightGradients deferred;
  bool forwarded = false;
  bool in_flight = false;
};

// The state of one Run().
class StepRunner {
 public:
  using Clock = std::chrono::steady_clock;

  StepRunner(const Schedule& schedule, int stage, PipelineChannels channels, StageModel& model,
             ReceiveBufferPool& receive_buffers)
      : shape_(schedule.shape),
        stage_(stage),
        channels_(channels),
        model_(model),
        receive_buffers_(receive_buffers),
        start_(Clock::now()) {
    const int p = shape_.stages;
    next_stage_ = (stage_ + 1) % p;
    prev_stage_ = (stage_ + p - 1) % p;
  }

  // Seconds since the runner started.
  double Seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  // When the last action's wait for a receive ended (-1: it did not wait):
  // a compute's timing starts there, so waiting counts as idle.
  double wait_end() const { return wait_end_; }

  void Execute(const Action& a) {
    wait_end_ = -1.0;
    switch (a.type) {
      case ActionType::kRecvActivation:
        return RecvActivation(a);
      case ActionType::kSendActivation:
        return SendActivation(a);
      case ActionType::kRecvGrad:
        return RecvGrad(a);
      case ActionType::kSendGrad:
        return SendGrad(a);
      case ActionType::kForward:
        return Forward(a);
      case ActionType::kBackward:
        return Backward(a);
      case ActionType::kBackwardInput:
        return BackwardInputPhase(a);
      case ActionType::kBackwardWeight:
        return BackwardWeightPhase(a);
    }
  }

  // Waits for every send; checks that nothing is left over.
  void Finish(PipelineStepResult& result) {
    for (WorkHandle& w : sends_) w->Wait();
    sends_.clear();
    for (auto& [key, slot] : slots_) {
      FULCRUM_CHECK(
          !slot.activation_recv && !slot.grad_recv && !slot.in_flight && !slot.deferred.pending(),
          "stage ", stage_, ": micro-batch ", key.first, " chunk ", key.second,
          " left unfinished by the schedule");
    }
    result.max_in_flight = max_in_flight_;
    for (auto& [mb, loss] : losses_) result.losses.push_back(std::move(loss));
  }

 private:
  using Key = std::pair<int, int>;  // (micro-batch, chunk)

  int VirtualStage(int chunk) const { return chunk * shape_.stages + stage_; }
  bool IsFirst(int chunk) const { return VirtualStage(chunk) == 0; }
  bool IsLast(int chunk) const {
    return VirtualStage(chunk) == shape_.stages * shape_.virtual_stages - 1;
  }
  Slot& At(const Action& a) { return slots_[Key(a.micro_batch, a.chunk)]; }

  void RecvActivation(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(!IsFirst(a.chunk) && !s.activation_recv && !s.forwarded, "stage ", stage_,
                  ": unexpected ", ToString(a));
    s.input = receive_buffers_.Acquire(model_.ActivationShape(a.chunk, a.micro_batch),
                                       model_.ActivationOptions());
    s.activation_recv = channels_.activations->RecvAsync(s.input, prev_stage_);
  }

  void SendActivation(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(s.forwarded && s.output.defined() && !IsLast(a.chunk), "stage ", stage_, ": ",
                  ToString(a), " before its forward");
    // The Work keeps the (contiguous, detached) tensor alive until sent.
    sends_.push_back(channels_.activations->SendAsync(s.output.detach().contiguous(), next_stage_));
  }

  void RecvGrad(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(!IsLast(a.chunk) && !s.grad_recv, "stage ", stage_, ": unexpected ", ToString(a));
    // The gradient has the output's shape: known after the forward, else the
    // model's activation shape (activations keep their shape across stages).
    const std::vector<int64_t> shape = s.output.defined()
                                           ? s.output.sizes().vec()
                                           : model_.ActivationShape(a.chunk, a.micro_batch);
    s.grad_output = receive_buffers_.Acquire(shape, model_.ActivationOptions());
    s.grad_recv = channels_.gradients->RecvAsync(s.grad_output, next_stage_);
  }

  void SendGrad(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(s.grad_input.defined(), "stage ", stage_, ": ", ToString(a),
                  " before its input gradient");
    sends_.push_back(channels_.gradients->SendAsync(s.grad_input.contiguous(), prev_stage_));
    s.grad_input = torch::Tensor();
    EraseIfDone(a);
  }

  void Forward(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(!s.forwarded, "stage ", stage_, ": ", ToString(a), " twice");
    torch::Tensor input;
    if (!IsFirst(a.chunk)) {
      FULCRUM_CHECK(s.activation_recv != nullptr, "stage ", stage_, ": ", ToString(a),
                    " without its receive");
      s.activation_recv->Wait();
      s.activation_recv.reset();
      wait_end_ = Seconds();
      input = s.input.requires_grad_(true);
    }
    s.output = model_.Forward(a.chunk, a.micro_batch, input);
    if (IsLast(a.chunk)) {
      FULCRUM_CHECK(s.output.dim() == 0,
                    "the last virtual stage's Forward must return a 0-dim "
                    "loss, got shape ",
                    c10::str(s.output.sizes()));
      losses_[a.micro_batch] = s.output.detach();
    }
    s.forwarded = true;
    s.in_flight = true;
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
  }

  // d loss / d output: 1 for the loss, else the received gradient.
  torch::Tensor TakeGradOutput(Slot& s, const Action& a) {
    FULCRUM_CHECK(s.forwarded && s.output.defined(), "stage ", stage_, ": ", ToString(a),
                  " before its forward");
    if (IsLast(a.chunk)) return torch::Tensor();
    FULCRUM_CHECK(s.grad_recv != nullptr, "stage ", stage_, ": ", ToString(a),
                  " without its gradient receive");
    s.grad_recv->Wait();
    s.grad_recv.reset();
    wait_end_ = Seconds();
    return std::move(s.grad_output);
  }

  // Drops the slot of a (micro-batch, chunk) that has nothing left to do.
  void EraseIfDone(const Action& a) {
    auto it = slots_.find(Key(a.micro_batch, a.chunk));
    const Slot& s = it->second;
    if (s.forwarded && !s.in_flight && !s.deferred.pending() && !s.grad_input.defined() &&
        !s.activation_recv && !s.grad_recv) {
      slots_.erase(it);
    }
  }

  void Release(Slot& s) {
    s.input = torch::Tensor();
    s.output = torch::Tensor();
    if (s.in_flight) --in_flight_;
    s.in_flight = false;
  }

  void Backward(const Action& a) {
    Slot& s = At(a);
    const torch::Tensor grad = TakeGradOutput(s, a);
    if (grad.defined()) {
      torch::autograd::backward({s.output}, {grad});
    } else {
      torch::autograd::backward({s.output});
    }
    if (s.input.defined()) {
      s.grad_input = s.input.grad().defined() ? s.input.grad() : torch::zeros_like(s.input);
    }
    Release(s);
    EraseIfDone(a);
  }

  void BackwardInputPhase(const Action& a) {
    Slot& s = At(a);
    const torch::Tensor grad = TakeGradOutput(s, a);
    torch::Tensor target = s.input;
    if (IsFirst(a.chunk)) {
      target = model_.TakeSplitPoint(a.chunk, a.micro_batch);
      if (target.defined() && !target.requires_grad()) target = torch::Tensor();
    }
    torch::Tensor grad_input =
        BackwardInput(s.output, grad, target, model_.ChunkParameters(a.chunk), s.deferred);
    if (s.input.defined()) s.grad_input = std::move(grad_input);
    // The deferred state holds the graph; the activations stay in flight
    // until the weight phase.
    s.output = torch::Tensor();
    s.input = torch::Tensor();
  }

  void BackwardWeightPhase(const Action& a) {
    Slot& s = At(a);
    FULCRUM_CHECK(s.deferred.pending(), "stage ", stage_, ": ", ToString(a),
                  " before its input phase");
    BackwardWeight(s.deferred);
    Release(s);
    EraseIfDone(a);
  }

  const ScheduleShape shape_;
  const int stage_;
  const PipelineChannels channels_;
  StageModel& model_;
  ReceiveBufferPool& receive_buffers_;
  const Clock::time_point start_;
  double wait_end_ = -1.0;
  int next_stage_ = 0;
  int prev_stage_ = 0;
  std::map<Key, Slot> slots_;
  std::map<int, torch::Tensor> losses_;
  std::vector<WorkHandle> sends_;
  int in_flight_ = 0;
  int max_in_flight_ = 0;
};

}  // namespace

PipelineExecutor::PipelineExecutor(Schedule schedule, int stage, PipelineChannels channels,
                                   bool record_timings)
    : schedule_(std::move(schedule)),
      stage_(stage),
      channels_(channels),
      record_timings_(record_timings) {
  FULCRUM_CHECK(stage_ >= 0 && stage_ < schedule_.shape.stages &&
                    static_cast<int>(schedule_.stages.size()) == schedule_.shape.stages,
                "stage ", stage_, " of a schedule with ", schedule_.stages.size(), " lists for ",
                schedule_.shape.stages, " stages");
  FULCRUM_CHECK(channels_.activations != nullptr && channels_.gradients != nullptr,
                "the pipeline channels are not set");
}

PipelineStepResult PipelineExecutor::Run(StageModel& model) {
  PipelineStepResult result;
  StepRunner runner(schedule_, stage_, channels_, model, receive_buffers_);
  for (const Action& action : schedule_.stages[stage_]) {
    const bool timed = record_timings_ && IsCompute(action.type);
    const double t0 = timed ? runner.Seconds() : 0.0;
    runner.Execute(action);
    if (timed) {
      result.timings.push_back({action, std::max(t0, runner.wait_end()), runner.Seconds()});
    }
  }
  runner.Finish(result);
  result.step_seconds = runner.Seconds();
  return result;
}

}  // namespace fulcrum::parallel::pipeline
