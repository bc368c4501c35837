// CPU tensor bytes counted from LibTorch's allocation reports (a
// c10::MemoryReportingInfoBase installed as the profiler state): exact live
// and peak bytes of what a piece of code allocates, unlike the RSS.
#pragma once

#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <memory>

namespace fulcrum::testing {

struct TensorBytesCounter : c10::MemoryReportingInfoBase {
  int64_t live = 0, peak = 0;
  bool memoryProfilingEnabled() const override { return true; }
  void reportMemoryUsage(void*, int64_t delta, int64_t, int64_t, c10::Device) override {
    live += delta;
    peak = std::max(peak, live);
  }
};

// What `forward` leaves allocated besides its output: what its backward keeps.
inline int64_t KeptForBackward(const std::function<torch::Tensor()>& forward) {
  auto counter = std::make_shared<TensorBytesCounter>();
  c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, counter);
  const torch::Tensor out = forward();
  return counter->live - static_cast<int64_t>(out.numel() * out.element_size());
}

// The peak of the bytes `run` allocates beyond those live when it starts.
inline int64_t PeakTensorBytes(const std::function<void()>& run) {
  auto counter = std::make_shared<TensorBytesCounter>();
  {
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, counter);
    run();
  }
  return counter->peak;
}

}  // namespace fulcrum::testing
