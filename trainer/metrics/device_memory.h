// Memory of this rank's accelerator, from LibTorch's CUDA caching allocator:
// what tensors hold now and at the peak of the step, and what the allocator
// has reserved from the device. All zero on the CPU and in builds against a
// LibTorch without CUDA.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace fulcrum::metrics {

struct DeviceMemoryUsage {
  int64_t allocated_bytes = 0;
  int64_t peak_allocated_bytes = 0;  // since the last ResetDevicePeak
  int64_t reserved_bytes = 0;
};

DeviceMemoryUsage CurrentDeviceMemory(const torch::Device& device);
// Starts a new peak (the trainer calls it at each step's start).
void ResetDevicePeak(const torch::Device& device);

}  // namespace fulcrum::metrics
