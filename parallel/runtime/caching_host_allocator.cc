#include "parallel/runtime/caching_host_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "core/check.h"

namespace fulcrum::parallel {
namespace {

// Blocks this large get transparent huge pages where the kernel gives them on
// request (fewer faults on the first step, fewer TLB misses in the GEMMs).
constexpr size_t kHugePageBytes = size_t{2} << 20;
// Above LibTorch's default priority (0), so that this allocator wins.
constexpr uint8_t kPriority = 1;
constexpr size_t kMinBytes = size_t{256} << 10;
// Cached blocks may exceed the live peak by 1/8: a step needs, of each size,
// as many blocks as are live at once, and its phases use different sizes
// (the logits' [N, V] at the loss, the layers' activations in backward), so
// that sum is above the peak of live bytes: the 55M bench Llama's step
// needs 10% more. With 1/16 every step of it unmapped and mapped again ~20
// blocks, the logits' 262 MB among them (11% fewer tokens/s than glibc).
constexpr int64_t kSlackDivisor = 8;

size_t PageRounded(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// bytes rounded up to the next of 8 classes per power of two: a multiple of
// 1/8 of the largest power of two not above it (pages, from 32 KiB up).
// (16 classes cost as much resident memory on the bench Llama and missed
// more often under ep: the MoE's step at ep 2 took 1.8 s instead of 1.35.)
size_t SizeClass(size_t bytes) {
  int log2 = 0;
  while ((bytes >> (log2 + 1)) != 0) ++log2;
  const size_t step = size_t{1} << std::max(0, log2 - 3);
  return PageRounded((bytes + step - 1) / step * step);
}

// LibTorch's bf16 GEMMs take scratch through raw_allocate and give it back
// through raw_deleter(), a plain function of the data pointer: so every
// allocator's blocks in use are found by their address here.
struct BlocksInUse {
  std::mutex mutex;
  std::unordered_map<void*, void*> block_of;  // data -> CachingHostAllocator::Block
};

BlocksInUse& InUse() {
  static BlocksInUse* const in_use = new BlocksInUse();  // outlives every tensor
  return *in_use;
}

void Report(void* ptr, int64_t delta, const HostAllocatorStats& stats) {
  if (c10::memoryProfilingEnabled()) {
    c10::reportMemoryUsageToProfiler(ptr, delta, stats.allocated_bytes, stats.reserved_bytes,
                                     c10::Device(c10::DeviceType::CPU));
  }
}

}  // namespace

CachingHostAllocator::CachingHostAllocator(size_t min_bytes) : min_bytes_(min_bytes) {}

CachingHostAllocator::~CachingHostAllocator() { ReleaseCached(); }

c10::DataPtr CachingHostAllocator::allocate(size_t bytes) const {
  if (bytes < min_bytes_) return c10::GetDefaultCPUAllocator()->allocate(bytes);
  const size_t size_class = SizeClass(bytes);
  Block* block = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // This class or the next: a step whose sizes straddle a class boundary
    // settles on the larger blocks instead of mapping both in turn.
    auto it = free_by_size_.lower_bound(size_class);
    if (it != free_by_size_.end() && it->first <= SizeClass(size_class + 1)) {
      block = it->second.back();  // the most recently freed: warmest in cache
      it->second.pop_back();
      if (it->second.empty()) free_by_size_.erase(it);  // sizes may not recur (MoE rows)
      free_lru_.erase(block->lru);
    } else {
      block = Map(size_class);
    }
    stats_.allocated_bytes += static_cast<int64_t>(block->bytes);
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
    Report(block->ptr, static_cast<int64_t>(block->bytes), stats_);
  }
  {
    BlocksInUse& in_use = InUse();
    std::lock_guard<std::mutex> lock(in_use.mutex);
    in_use.block_of[block->ptr] = block;
  }
  return c10::DataPtr(block->ptr, block->ptr, &CachingHostAllocator::Free,
                      c10::Device(c10::DeviceType::CPU));
}

c10::DeleterFnPtr CachingHostAllocator::raw_deleter() const { return &CachingHostAllocator::Free; }

void CachingHostAllocator::Free(void* ptr) {
  Block* block = nullptr;
  {
    BlocksInUse& in_use = InUse();
    std::lock_guard<std::mutex> lock(in_use.mutex);
    auto it = in_use.block_of.find(ptr);
    if (it != in_use.block_of.end()) {
      block = static_cast<Block*>(it->second);
      in_use.block_of.erase(it);
    }
  }
  if (block == nullptr) {
    // A small request's raw_allocate: LibTorch's default allocator's.
    c10::GetDefaultCPUAllocator()->raw_deleter()(ptr);
    return;
  }
  block->owner->Return(block);
}

void CachingHostAllocator::Return(Block* block) const {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.allocated_bytes -= static_cast<int64_t>(block->bytes);
  Report(block->ptr, -static_cast<int64_t>(block->bytes), stats_);
  block->lru = free_lru_.insert(free_lru_.end(), block);
  free_by_size_[block->bytes].push_back(block);
}

CachingHostAllocator::Block* CachingHostAllocator::Map(size_t bytes) const {
  const int64_t size = static_cast<int64_t>(bytes);
  reserved_bound_ = std::max(reserved_bound_, stats_.allocated_bytes + size);
  const int64_t bound = reserved_bound_ + reserved_bound_ / kSlackDivisor;
  while (!free_lru_.empty() && stats_.reserved_bytes + size > bound) UnmapOldest();
  void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ptr == MAP_FAILED) {
    while (!free_lru_.empty()) UnmapOldest();
    ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  TORCH_CHECK(ptr != MAP_FAILED, "CachingHostAllocator: out of host memory mapping ", bytes,
              " bytes (", stats_.allocated_bytes, " bytes in live tensors)");
  if (bytes >= kHugePageBytes) madvise(ptr, bytes, MADV_HUGEPAGE);  // advice: failure is fine
  ++stats_.maps;
  stats_.reserved_bytes += size;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  return new Block{ptr, bytes, this, {}};
}

void CachingHostAllocator::UnmapOldest() const {
  Block* block = free_lru_.front();
  free_lru_.pop_front();
  auto same = free_by_size_.find(block->bytes);
  same->second.erase(std::find(same->second.begin(), same->second.end(), block));
  if (same->second.empty()) free_by_size_.erase(same);
  Unmap(block);
}

void CachingHostAllocator::Unmap(Block* block) const {
  FULCRUM_CHECK(munmap(block->ptr, block->bytes) == 0, "munmap of ", block->bytes, " bytes");
  stats_.reserved_bytes -= static_cast<int64_t>(block->bytes);
  ++stats_.unmaps;
  delete block;
}

HostAllocatorStats CachingHostAllocator::Stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingHostAllocator::ResetPeak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

void CachingHostAllocator::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!free_lru_.empty()) UnmapOldest();
}

CachingHostAllocator* InstallCachingHostAllocator() {
  // Never destroyed: tensors may outlive main's locals and return their
  // blocks during static destruction.
  static CachingHostAllocator* const allocator = [] {
    auto* a = new CachingHostAllocator(kMinBytes);
    c10::SetCPUAllocator(a, kPriority);
    return a;
  }();
  return allocator;
}

CachingHostAllocator* InstalledCachingHostAllocator() {
  return dynamic_cast<CachingHostAllocator*>(c10::GetCPUAllocator());
}

}  // namespace fulcrum::parallel
