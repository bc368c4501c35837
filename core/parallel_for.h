// ParallelFor: at::parallel_for for fulcrum's own CPU kernels, on LibTorch's
// intra-op threads.
//
// at::parallel_for is a header template. Under LibTorch's OpenMP backend
// (Debian's and PyTorch's builds) it splits the range only where the file
// including it is compiled with the compiler's OpenMP (`_OPENMP`); otherwise
// it runs the whole range on the calling thread, silently. The tree is built
// with clang, whose OpenMP would be a second runtime and thread pool beside
// LibTorch's libgomp, so every kernel of ours ran on one thread of the rank's
// two (a perf profile of the ~290M bench Llama showed RMSNorm, rotary,
// SwiGLU and AdamW on the main thread only, the other thread waiting).
//
// ParallelFor enters LibTorch's own libgomp through its ABI entry point, the
// call GCC's `#pragma omp parallel` compiles to (GOMP_parallel), found in the
// process's libraries at the first call. So our kernels share LibTorch's
// threads, their count (at::set_num_threads) and its rule for nesting: inside
// a parallel region the range runs on the calling thread. Without libgomp
// (another backend) at::parallel_for splits it itself.
//
// The split is at::parallel_for's: at most min(threads, ceil(n / grain))
// contiguous chunks of ceil(n / threads) elements, chunk i on thread i.
#pragma once

#include <cstdint>
#include <functional>

namespace fulcrum {

// Calls f(chunk_begin, chunk_end) over [begin, end) in chunks of at least
// `grain` elements, on up to at::get_num_threads() threads; returns when all
// are done. An exception from f is rethrown here (the first one).
void ParallelFor(int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& f);

// How ParallelFor splits ranges in this process: "libgomp" (LibTorch's
// OpenMP runtime, entered through its ABI), "aten" (at::parallel_for splits
// them itself), or "serial" (at::parallel_for here runs them on the caller).
const char* ParallelForBackend();

}  // namespace fulcrum
