#include "trainer/metrics/phase_timer.h"

namespace fulcrum::metrics {

// No synchronisation at the start: the step's phases follow each other, so
// the previous scope's end (or the last step's loss read) already drained
// the device; one synchronisation per phase, none inside a layer.
PhaseTimer::Scope::Scope(PhaseTimer& timer, StepPhase phase)
    : timer_(timer), phase_(phase), start_(std::chrono::steady_clock::now()) {}

PhaseTimer::Scope::~Scope() {
  timer_.SyncDevice();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start_;
  timer_.Add(phase_, elapsed.count());
}

void PhaseTimer::Add(StepPhase phase, double seconds) {
  switch (phase) {
    case StepPhase::kDataWait:
      times_.data_wait += seconds;
      break;
    case StepPhase::kForward:
      times_.forward += seconds;
      break;
    case StepPhase::kBackward:
      times_.backward += seconds;
      break;
    case StepPhase::kCommWait:
      times_.comm_wait += seconds;
      break;
    case StepPhase::kOptimizer:
      times_.optimizer += seconds;
      break;
  }
}

StepTimes PhaseTimer::Take() {
  const StepTimes times = times_;
  times_ = StepTimes();
  return times;
}

void PhaseTimer::SyncDevice() const {
  if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
}

}  // namespace fulcrum::metrics
