#include "trainer/metrics/memory.h"

#include <fstream>
#include <string>

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
  return usage;
}

}  // namespace fulcrum::metrics
