#include "parallel/runtime/caching_host_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <random>
#include <vector>

namespace fulcrum::parallel {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kMin = 256 << 10;

class CachingHostAllocatorTest : public ::testing::Test {
 protected:
  CachingHostAllocator allocator_{kMin};
};

TEST_F(CachingHostAllocatorTest, SmallRequestsGoToTheSmallAllocator) {
  c10::DataPtr p = allocator_.allocate(kMin - 1);
  ASSERT_NE(p.get(), nullptr);
  std::memset(p.get(), 1, kMin - 1);
  const HostAllocatorStats s = allocator_.Stats();
  EXPECT_EQ(s.allocated_bytes, 0);
  EXPECT_EQ(s.maps, 0);
}

TEST_F(CachingHostAllocatorTest, AFreedBlockIsTakenBackByTheNextRequestOfItsSizeClass) {
  // Between 2 and 4 MiB the classes are 256 KiB apart: 3 MiB + 5 bytes takes
  // a block of 3.25 MiB.
  constexpr int64_t kClass = 3 * kMiB + kMiB / 4;
  void* first = nullptr;
  {
    c10::DataPtr p = allocator_.allocate(3 * kMiB + 5);
    first = p.get();
    std::memset(first, 7, kClass);  // mapped writable, the whole class
    EXPECT_EQ(allocator_.Stats().allocated_bytes, kClass);
  }
  EXPECT_EQ(allocator_.Stats().allocated_bytes, 0);
  EXPECT_EQ(allocator_.Stats().reserved_bytes, kClass);
  {
    c10::DataPtr again = allocator_.allocate(kClass);  // the top of the class
    EXPECT_EQ(again.get(), first);
  }
  c10::DataPtr again = allocator_.allocate(3 * kMiB + 100);
  EXPECT_EQ(again.get(), first);
  EXPECT_EQ(allocator_.Stats().maps, 1);
  c10::DataPtr other = allocator_.allocate(kClass + 1);  // the next class
  EXPECT_NE(other.get(), first);
  c10::DataPtr two = allocator_.allocate(2 * kMiB);
  EXPECT_EQ(allocator_.Stats().maps, 3);
  EXPECT_EQ(allocator_.Stats().peak_allocated_bytes, 2 * kClass + kMiB / 4 + 2 * kMiB);
}

TEST_F(CachingHostAllocatorTest, SizesThatVaryALittleBetweenStepsStopMapping) {
  // Under ep the rows an expert receives change with every routing: here
  // 4 MiB +- 3% every step, which spans two classes (4 and 4.5 MiB).
  // A request takes a free block of its class or of the next one, so the
  // cache settles on blocks of the larger class.
  std::mt19937 rng(5);
  const auto step = [&] {
    c10::DataPtr rows = allocator_.allocate((1024 - 31 + rng() % 62) * 4096);
    c10::DataPtr grad = allocator_.allocate((1024 - 31 + rng() % 62) * 4096);
  };
  for (int i = 0; i < 10; ++i) step();
  const HostAllocatorStats settled = allocator_.Stats();
  EXPECT_LE(settled.maps, 4);
  for (int i = 0; i < 100; ++i) step();
  EXPECT_EQ(allocator_.Stats().maps, settled.maps);
  EXPECT_EQ(allocator_.Stats().reserved_bytes, 2 * static_cast<int64_t>(4 * kMiB + kMiB / 2));
}

TEST_F(CachingHostAllocatorTest, ARequestTakesABlockOfTheNextClassButNoLarger) {
  void* next = nullptr;
  void* larger = nullptr;
  {
    c10::DataPtr a = allocator_.allocate(4 * kMiB + kMiB / 2);  // class 4.5 MiB
    c10::DataPtr b = allocator_.allocate(5 * kMiB);
    next = a.get();
    larger = b.get();
  }
  c10::DataPtr p = allocator_.allocate(4 * kMiB);  // class 4 MiB: takes the 4.5 MiB block
  EXPECT_EQ(p.get(), next);
  c10::DataPtr q = allocator_.allocate(4 * kMiB);  // not the 5 MiB one, two classes up
  EXPECT_NE(q.get(), larger);
  EXPECT_EQ(allocator_.Stats().maps, 3);
}

// One "training step": allocations and frees of a few sizes, interleaved as
// saved activations (kept to the end) and transients (freed at once).
void Step(const CachingHostAllocator& a) {
  std::vector<c10::DataPtr> saved;
  for (int layer = 0; layer < 6; ++layer) {
    c10::DataPtr transient = a.allocate(4 * kMiB);
    saved.push_back(a.allocate(kMiB + 64 * 4096 * layer));
    c10::DataPtr wide = a.allocate(11 * kMiB);
    saved.push_back(a.allocate(2 * kMiB));
  }
  while (!saved.empty()) {
    c10::DataPtr grad = a.allocate(2 * kMiB);
    saved.pop_back();
  }
}

TEST_F(CachingHostAllocatorTest, AStepThatRepeatsItsSizesMapsNothingAfterTheFirst) {
  Step(allocator_);
  const HostAllocatorStats first = allocator_.Stats();
  EXPECT_GT(first.maps, 0);
  for (int i = 0; i < 3; ++i) Step(allocator_);
  const HostAllocatorStats later = allocator_.Stats();
  EXPECT_EQ(later.maps, first.maps);
  EXPECT_EQ(later.unmaps, first.unmaps);
  EXPECT_EQ(later.allocated_bytes, 0);
}

TEST_F(CachingHostAllocatorTest, ReservedStaysWithinAnEighthOfTheLivePeakWhateverTheSizes) {
  std::mt19937 rng(3);
  std::vector<c10::DataPtr> live;
  int64_t live_peak = 0;
  for (int i = 0; i < 2000; ++i) {
    // Sizes that rarely repeat (MoE rows per expert, varying sequence lengths).
    if (live.empty() || rng() % 3 != 0) {
      const size_t pages = 64 + rng() % 2000;
      live.push_back(allocator_.allocate(pages * 4096));
    } else {
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(rng() % live.size()));
    }
    const HostAllocatorStats s = allocator_.Stats();
    live_peak = std::max(live_peak, s.allocated_bytes);
    ASSERT_LE(s.reserved_bytes, live_peak + live_peak / 8) << "after request " << i;
    ASSERT_GE(s.reserved_bytes, s.allocated_bytes);
  }
  EXPECT_GT(allocator_.Stats().unmaps, 0);
  live.clear();
  allocator_.ReleaseCached();
  EXPECT_EQ(allocator_.Stats().reserved_bytes, 0);
}

TEST_F(CachingHostAllocatorTest, ResetPeakStartsFromTheCurrentValues) {
  {
    c10::DataPtr a = allocator_.allocate(8 * kMiB);
    c10::DataPtr b = allocator_.allocate(kMiB);
  }
  c10::DataPtr c = allocator_.allocate(kMiB);
  EXPECT_EQ(allocator_.Stats().peak_allocated_bytes, static_cast<int64_t>(9 * kMiB));
  allocator_.ResetPeak();
  EXPECT_EQ(allocator_.Stats().peak_allocated_bytes, static_cast<int64_t>(kMiB));
  EXPECT_EQ(allocator_.Stats().peak_reserved_bytes, static_cast<int64_t>(9 * kMiB));
}

// LibTorch's bf16 GEMMs take scratch this way: context = data, freed
// through raw_deleter().
TEST_F(CachingHostAllocatorTest, RawAllocationsComeBackThroughTheRawDeleter) {
  void* big = allocator_.raw_allocate(2 * kMiB);
  void* small = allocator_.raw_allocate(64);
  EXPECT_EQ(allocator_.Stats().allocated_bytes, static_cast<int64_t>(2 * kMiB));
  ASSERT_NE(allocator_.raw_deleter(), nullptr);
  allocator_.raw_deallocate(small);
  allocator_.raw_deallocate(big);
  EXPECT_EQ(allocator_.Stats().allocated_bytes, 0);
  c10::DataPtr again = allocator_.allocate(2 * kMiB);
  EXPECT_EQ(again.get(), big);
}

// LibTorch's memory profiler sees the blocks come and go.
struct Recorder : c10::MemoryReportingInfoBase {
  std::vector<int64_t> deltas;
  bool memoryProfilingEnabled() const override { return true; }
  void reportMemoryUsage(void*, int64_t delta, int64_t, int64_t, c10::Device) override {
    deltas.push_back(delta);
  }
};

TEST_F(CachingHostAllocatorTest, ReportsToTheProfiler) {
  auto recorder = std::make_shared<Recorder>();
  {
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, recorder);
    c10::DataPtr p = allocator_.allocate(kMiB);
  }
  EXPECT_EQ(recorder->deltas,
            (std::vector<int64_t>{static_cast<int64_t>(kMiB), -static_cast<int64_t>(kMiB)}));
}

TEST(InstallCachingHostAllocatorTest, LibTorchTensorsComeFromItOnceInstalled) {
  const torch::Tensor before = torch::ones({1 << 20});  // LibTorch's own allocator
  EXPECT_EQ(InstalledCachingHostAllocator(), nullptr);
  CachingHostAllocator* a = InstallCachingHostAllocator();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(InstallCachingHostAllocator(), a);
  EXPECT_EQ(InstalledCachingHostAllocator(), a);
  const int64_t base = a->Stats().allocated_bytes;
  {
    const torch::Tensor big = torch::full({1 << 20}, 2.0f);  // 4 MiB
    EXPECT_EQ(a->Stats().allocated_bytes - base, 4 << 20);
    EXPECT_FLOAT_EQ((big + before).sum().item<float>(), 3.0f * (1 << 20));
    const torch::Tensor small = torch::ones({16});          // below the minimum: LibTorch's
    EXPECT_EQ(a->Stats().allocated_bytes - base, 4 << 20);  // the sum's block is back
  }
  EXPECT_EQ(a->Stats().allocated_bytes, base);
  // bf16 GEMMs take their scratch through raw_allocate. Where bf16 is
  // emulated (an AVX2 CPU: no AVX512-BF16 or AMX) the product's partial sums
  // round to bf16: 2.6% of the norm at K = 512, against 0.2% from rounding
  // the result alone, so the check is on the norm.
  const torch::Tensor x = torch::randn({256, 512}).to(torch::kBFloat16);
  const torch::Tensor y = torch::randn({512, 384}).to(torch::kBFloat16);
  const torch::Tensor expected = torch::mm(x.to(torch::kFloat), y.to(torch::kFloat));
  const torch::Tensor got = torch::mm(x, y).to(torch::kFloat);
  EXPECT_LT(((got - expected).norm() / expected.norm()).item<double>(), 0.05);
}

}  // namespace
}  // namespace fulcrum::parallel
