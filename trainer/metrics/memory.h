// Memory of this rank: resident set now and at its peak (CPU), from
// /proc/self/status. CUDA allocator statistics join here with the GPU path.
#pragma once

#include <cstdint>

namespace fulcrum::metrics {

struct MemoryUsage {
  int64_t rss_bytes = 0;
  int64_t peak_rss_bytes = 0;
};

MemoryUsage CurrentMemoryUsage();

}  // namespace fulcrum::metrics
