#include "trainer/checkpoint/host_buffer.h"

#include <sys/mman.h>

#include "core/check.h"

namespace fulcrum::checkpoint {
namespace {

constexpr size_t kHugePageBytes = size_t{2} << 20;

}  // namespace

torch::Tensor NewHostBuffer(int64_t numel, torch::ScalarType dtype) {
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes < kHugePageBytes) return torch::zeros({numel}, torch::TensorOptions().dtype(dtype));
  const size_t mapped = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* memory =
      ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  FULCRUM_CHECK(memory != MAP_FAILED, "mmap of ", mapped, " bytes for a checkpoint buffer failed");
  ::madvise(memory, mapped, MADV_HUGEPAGE);  // advice: ignored where THP is off
  auto* page = static_cast<volatile char*>(memory);
  for (size_t at = 0; at < mapped; at += 4096) page[at] = 0;  // fault in now, not at the save
  return torch::from_blob(
      memory, {numel}, [mapped](void* p) { ::munmap(p, mapped); },
      torch::TensorOptions().dtype(dtype));
}

}  // namespace fulcrum::checkpoint
