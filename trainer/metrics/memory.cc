#include "trainer/metrics/memory.h"

#include <fstream>
#include <string>

#include "parallel/runtime/caching_host_allocator.h"

namespace fulcrum::metrics {

MemoryUsage CurrentMemoryUsage() {
  MemoryUsage usage;
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    int64_t kib = 0;
    if (key == "VmRSS:") {
      status >> kib;
      usage.rss_bytes = kib * 1024;
    } else if (key == "VmHWM:") {
      status >> kib;
      usage.peak_rss_bytes = kib * 1024;
    }
  }
  if (const parallel::CachingHostAllocator* allocator = parallel::InstalledCachingHostAllocator()) {
    const parallel::HostAllocatorStats stats = allocator->Stats();
    usage.peak_host_tensor_bytes = stats.peak_allocated_bytes;
    usage.peak_host_reserved_bytes = stats.peak_reserved_bytes;
  }
  return usage;
}

}  // namespace fulcrum::metrics
