// Where a training step's time goes, on the host clock: waiting for data,
// forward, backward, communication left exposed (bucket reductions still
// running after backward, the loss's all-reduce, pipeline sends, receives and
// bubble), and the optimizer (gradient clipping included). On CUDA the end of
// each measured phase synchronises the device so that the clock sees the
// kernels: two per micro-batch (forward, backward) and three per step, none
// inside a layer. Scopes must follow each other (a scope's start relies on
// the previous one's synchronisation).
#pragma once

#include <torch/torch.h>

#include <chrono>

namespace fulcrum::metrics {

struct StepTimes {
  double data_wait = 0.0;
  double forward = 0.0;
  double backward = 0.0;
  double comm_wait = 0.0;
  double optimizer = 0.0;
  double total() const { return data_wait + forward + backward + comm_wait + optimizer; }
};

enum class StepPhase { kDataWait, kForward, kBackward, kCommWait, kOptimizer };

class PhaseTimer {
 public:
  explicit PhaseTimer(torch::Device device = torch::kCPU) : device_(device) {}

  // Adds the time from its construction to its destruction to a phase.
  class Scope {
   public:
    Scope(PhaseTimer& timer, StepPhase phase);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    PhaseTimer& timer_;
    StepPhase phase_;
    std::chrono::steady_clock::time_point start_;
  };

  [[nodiscard]] Scope Measure(StepPhase phase) { return Scope(*this, phase); }
  void Add(StepPhase phase, double seconds);
  // The times since the last Take, and a fresh start.
  StepTimes Take();

 private:
  void SyncDevice() const;

  torch::Device device_;
  StepTimes times_;
};

}  // namespace fulcrum::metrics
