#include "trainer/metrics/device_memory.h"

#ifdef FULCRUM_TORCH_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace fulcrum::metrics {

DeviceMemoryUsage CurrentDeviceMemory(const torch::Device& device) {
  DeviceMemoryUsage usage;
#ifdef FULCRUM_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    constexpr size_t kAggregate = 0;  // StatType::AGGREGATE: every pool
    usage.allocated_bytes = stats.allocated_bytes[kAggregate].current;
    usage.peak_allocated_bytes = stats.allocated_bytes[kAggregate].peak;
    usage.reserved_bytes = stats.reserved_bytes[kAggregate].current;
  }
#endif
  return usage;
}

void ResetDevicePeak(const torch::Device& device) {
#ifdef FULCRUM_TORCH_HAS_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

}  // namespace fulcrum::metrics
