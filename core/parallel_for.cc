#include "core/parallel_for.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <exception>

namespace fulcrum {
namespace {

// libgomp's ABI (GCC's libgomp/libgomp_g.h and omp.h).
using GompParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpIntFn = int (*)();

struct Gomp {
  GompParallelFn parallel = nullptr;  // GOMP_parallel: runs fn(data) on every thread of a team
  OmpIntFn thread_num = nullptr;      // omp_get_thread_num
  OmpIntFn num_threads = nullptr;     // omp_get_num_threads
  bool found() const { return parallel && thread_num && num_threads; }
};

// The libgomp LibTorch loaded (a dependency of libtorch_cpu, so in the
// global scope dlsym searches), resolved once; all null without one.
const Gomp& LibTorchGomp() {
  static const Gomp gomp = [] {
    Gomp g;
    g.parallel = reinterpret_cast<GompParallelFn>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    g.thread_num = reinterpret_cast<OmpIntFn>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    g.num_threads = reinterpret_cast<OmpIntFn>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    return g;
  }();
  return gomp;
}

#if AT_PARALLEL_OPENMP && !defined(INTRA_OP_PARALLEL)
constexpr bool kAtenSplits = false;  // OpenMP LibTorch, this file without the compiler's OpenMP
#else
constexpr bool kAtenSplits = true;
#endif

int64_t DivUp(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Team {
  const Gomp* gomp = nullptr;
  int64_t begin = 0, end = 0, grain = 0;
  const std::function<void(int64_t, int64_t)>* f = nullptr;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
};

// Each thread of the team: its chunk, as at::internal::invoke_parallel cuts it.
void RunChunk(void* data) {
  Team& team = *static_cast<Team*>(data);
  int64_t threads = team.gomp->num_threads();
  if (team.grain > 0) threads = std::min(threads, DivUp(team.end - team.begin, team.grain));
  const int64_t tid = team.gomp->thread_num();
  const int64_t chunk = DivUp(team.end - team.begin, threads);
  const int64_t begin = team.begin + tid * chunk;
  if (begin >= team.end) return;
  try {
    // at::get_thread_num() inside f names this thread, as under at::parallel_for.
    at::internal::ThreadIdGuard tid_guard(static_cast<int>(tid));
    (*team.f)(begin, std::min(team.end, begin + chunk));
  } catch (...) {
    if (!team.failed.test_and_set()) team.error = std::current_exception();
  }
}

}  // namespace

void ParallelFor(int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& f) {
  if (begin >= end) return;
  const Gomp& gomp = LibTorchGomp();
  if (kAtenSplits || !gomp.found()) return at::parallel_for(begin, end, grain, f);
  const int64_t n = end - begin;
  if (n <= grain || n == 1 || at::in_parallel_region() || at::get_num_threads() <= 1) {
    at::internal::ThreadIdGuard tid_guard(0);
    f(begin, end);
    return;
  }
  Team team;
  team.gomp = &gomp;
  team.begin = begin;
  team.end = end;
  team.grain = grain;
  team.f = &f;
  // 0 threads: the team LibTorch's threads make (at::set_num_threads), as
  // at::parallel_for asks, which avoids a num_threads clause (pytorch#32008).
  gomp.parallel(&RunChunk, &team, 0, 0);
  if (team.error) std::rethrow_exception(team.error);
}

const char* ParallelForBackend() {
  if (kAtenSplits) return "aten";
  return LibTorchGomp().found() ? "libgomp" : "serial";
}

}  // namespace fulcrum
