#include <malloc.h>

#include "parallel/runtime/caching_host_allocator.h"
#include "trainer/cli/cli.h"

int main(int argc, char** argv) {
  // Large tensors: mapped once and reused by size across steps (see
  // caching_host_allocator.h). Not under the sanitizers, whose checks need
  // every allocation to go through malloc.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  fulcrum::parallel::InstallCachingHostAllocator();
#endif
  // Everything else (small tensors, the rest of the program) through glibc:
  // glibc serves blocks above 32 MiB with fresh mmaps and returns freed heap
  // to the kernel, so every step would page-fault those again (measured 2.4x
  // slower steps on CPU before the caching allocator took the large
  // tensors). Keep freed memory in the process. The trim threshold is a
  // size_t inside glibc; -1 makes it SIZE_MAX.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  mallopt(M_TOP_PAD, 256 << 20);
  return fulcrum::cli::Main(argc, argv);
}
