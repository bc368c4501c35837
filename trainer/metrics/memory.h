// Memory of this rank: resident set now and at its peak (CPU), from
// /proc/self/status, and, where the process installed the
// CachingHostAllocator, the peaks of its tensor bytes and of what it holds
// mapped: the resident set less the runtime, the small requests glibc
// serves, and the allocator's cached free blocks. CUDA allocator statistics
// are in device_memory.h.
#pragma once

#include <cstdint>

namespace fulcrum::metrics {

struct MemoryUsage {
  int64_t rss_bytes = 0;
  int64_t peak_rss_bytes = 0;
  // 0 without the CachingHostAllocator; peaks since the process started.
  int64_t peak_host_tensor_bytes = 0;
  int64_t peak_host_reserved_bytes = 0;
};

MemoryUsage CurrentMemoryUsage();

}  // namespace fulcrum::metrics
