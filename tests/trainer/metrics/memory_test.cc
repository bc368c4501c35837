// CurrentMemoryUsage: the resident set, and the CachingHostAllocator's peaks
// once the process installed it.
#include "trainer/metrics/memory.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "parallel/runtime/caching_host_allocator.h"

namespace fulcrum::metrics {
namespace {

TEST(CurrentMemoryUsageTest, ReportsTheHostAllocatorsPeaksOnceInstalled) {
  const MemoryUsage before = CurrentMemoryUsage();
  EXPECT_GT(before.rss_bytes, 0);
  EXPECT_GE(before.peak_rss_bytes, before.rss_bytes);
  EXPECT_EQ(before.peak_host_tensor_bytes, 0);  // glibc serves LibTorch so far
  EXPECT_EQ(before.peak_host_reserved_bytes, 0);

  parallel::InstallCachingHostAllocator();
  constexpr int64_t kBytes = int64_t{32} << 20;
  {
    const torch::Tensor big = torch::ones({kBytes / 4});
    EXPECT_EQ(big.sum().item<float>(), static_cast<float>(kBytes / 4));
  }
  const MemoryUsage after = CurrentMemoryUsage();
  EXPECT_GE(after.peak_host_tensor_bytes, kBytes);
  // The freed block stays cached: held bytes are at least the tensors'.
  EXPECT_GE(after.peak_host_reserved_bytes, after.peak_host_tensor_bytes);
  EXPECT_GE(after.peak_rss_bytes, before.peak_rss_bytes + kBytes);
}

}  // namespace
}  // namespace fulcrum::metrics
