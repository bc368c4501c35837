// CachingHostAllocator: LibTorch's CPU allocator for a training process, the
// host counterpart of CUDA's caching allocator.
//
// A training step allocates and frees the same large tensors (activations,
// their gradients, logits) in the same order every step. Through glibc's heap
// the holes the transient ones leave between the saved ones fragment it: the
// 290M Llama's LoRA forward grew the resident set by 2.27 GB for 1.42 GB of
// live tensors. Through fresh mmaps every step page-faults its working set
// again (2.4x slower steps, trainer/cli/fulcrum_main.cc). This allocator maps
// each large block once and keeps it, after it is freed, in a free list of
// its size class; the next step's allocation of that class, or of the class
// below, takes it back. Classes are 8 per power of two (a class is at most
// 1/8 above its requests, the next class 1/4), so that sizes
// which vary a little between steps find a block too: under
// expert parallelism the rows an expert receives change with every routing,
// and exact sizes mapped and faulted them in again each time (the
// DeepSeek-V2-shaped bench MoE at ep 2 ran 2x slower than at ep 1).
//
// Bounded: a request no cached block fits unmaps the least recently freed
// blocks until the blocks held, the new one included, are no more than the
// largest amount of live memory seen so far plus 1/8. So the reserved
// memory stays within 1/8 of the peak of live tensor bytes (rounded to
// pages), whatever the sizes, and a step that repeats its sizes maps nothing
// after the first.
//
// Requests below `min_bytes` go to LibTorch's default CPU allocator (glibc).
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace fulcrum::parallel {

struct HostAllocatorStats {
  int64_t allocated_bytes = 0;       // in live tensors (large blocks only)
  int64_t peak_allocated_bytes = 0;  // since the last ResetPeak
  int64_t reserved_bytes = 0;        // mapped: allocated + cached free blocks
  int64_t peak_reserved_bytes = 0;   // since the last ResetPeak
  int64_t maps = 0;                  // blocks mapped so far (misses)
  int64_t unmaps = 0;                // cached blocks given back to the kernel
};

class CachingHostAllocator final : public c10::Allocator {
 public:
  // Requests below min_bytes go to LibTorch's default CPU allocator.
  explicit CachingHostAllocator(size_t min_bytes);
  ~CachingHostAllocator() override;
  CachingHostAllocator(const CachingHostAllocator&) = delete;
  CachingHostAllocator& operator=(const CachingHostAllocator&) = delete;

  c10::DataPtr allocate(size_t bytes) const override;
  // Frees what raw_allocate gave (LibTorch's bf16 GEMM scratch among others).
  c10::DeleterFnPtr raw_deleter() const override;

  HostAllocatorStats Stats() const;
  // Starts new peaks at the current values.
  void ResetPeak();
  // Unmaps every cached free block (blocks in use stay).
  void ReleaseCached();

 private:
  struct Block {
    void* ptr = nullptr;
    size_t bytes = 0;
    const CachingHostAllocator* owner = nullptr;
    std::list<Block*>::iterator lru;  // valid while free
  };

  // The deleter of every DataPtr this allocator gives (context = data).
  static void Free(void* ptr);
  void Return(Block* block) const;
  // Maps a new block; the caller holds mutex_.
  Block* Map(size_t bytes) const;
  // Unmaps the least recently freed block; the caller holds mutex_.
  void UnmapOldest() const;
  void Unmap(Block* block) const;

  size_t min_bytes_;
  // c10::Allocator::allocate is const; the allocator's state is not.
  mutable std::mutex mutex_;
  mutable std::map<size_t, std::vector<Block*>> free_by_size_;  // by class
  mutable std::list<Block*> free_lru_;                          // oldest freed first
  mutable HostAllocatorStats stats_;
  mutable int64_t reserved_bound_ = 0;  // largest live demand seen: allocated + request
};

// Makes a CachingHostAllocator LibTorch's CPU allocator for the rest of the
// process (c10's allocator registry is process-wide, so this is the one
// process-wide object: call it first thing in main). Tensors allocated
// before keep their own deleter. Idempotent; returns the allocator.
CachingHostAllocator* InstallCachingHostAllocator();

// The installed allocator, or null when LibTorch's CPU allocator is another.
CachingHostAllocator* InstalledCachingHostAllocator();

}  // namespace fulcrum::parallel
