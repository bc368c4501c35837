// fulcrum_bench_comm: bus bandwidth of fulcrum's MPI communicator against the
// raw MPI calls on the same buffers, in the same run (scripts/bench_comm.sh).
//
//   mpirun -np 2 fulcrum_bench_comm [max_bytes]
//
// For each op (all_reduce, reduce_scatter, all_gather, all_to_all) and size
// (4 KiB .. 64 MiB in powers of 4, fp32): the blocking MPI call and fulcrum's
// blocking form (MPI's blocking call under a watchdog) alternate; then the
// non-blocking MPI call + MPI_Wait (what fulcrum's async forms post). Each iteration starts after a
// barrier and its time is the slowest rank's; the table shows the median. Bus bandwidth follows
// NCCL-tests: all_reduce 2(n-1)/n * bytes/t; the others (n-1)/n * bytes/t,
// bytes being the largest buffer of the op.
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "parallel/comm/communicator_factory.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel {
namespace {

struct OpRunners {
  const char* name;
  double bus_factor;  // x (n-1)/n
  std::function<void()> raw;
  std::function<void()> raw_nonblocking;
  std::function<void()> fulcrum;
};

struct Timings {
  double raw = 0, raw_nonblocking = 0, fulcrum = 0;  // median seconds per op
};

double TimeOnce(const std::function<void()>& run) {
  FULCRUM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  const double start = MPI_Wtime();
  run();
  double local = MPI_Wtime() - start, slowest = 0;
  FULCRUM_MPI_CHECK(MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return slowest;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Timings Measure(const OpRunners& op, int iterations) {
  for (int i = 0; i < 2; ++i) {  // warm-up
    op.raw();
    op.raw_nonblocking();
    op.fulcrum();
  }
  std::vector<double> raw, raw_nb, ours;
  // The blocking MPI call and fulcrum's alternate in one loop (each first
  // every other time); the non-blocking call, whose algorithm leaves the
  // caches in another state, runs in a loop of its own.
  for (int i = 0; i < iterations; ++i) {
    if (i % 2 == 0) {
      raw.push_back(TimeOnce(op.raw));
      ours.push_back(TimeOnce(op.fulcrum));
    } else {
      ours.push_back(TimeOnce(op.fulcrum));
      raw.push_back(TimeOnce(op.raw));
    }
  }
  for (int i = 0; i < iterations; ++i) raw_nb.push_back(TimeOnce(op.raw_nonblocking));
  return {Median(raw), Median(raw_nb), Median(ours)};
}

void Wait(MPI_Request request) { FULCRUM_MPI_CHECK(MPI_Wait(&request, MPI_STATUS_IGNORE)); }

// The four ops on buffers of `bytes` (fp32) for a group of n ranks.
std::vector<OpRunners> MakeOps(Communicator* comm, MPI_Comm raw_comm, int64_t bytes, int n) {
  const int64_t numel = bytes / 4;
  const int64_t chunk = numel / n;
  auto full = torch::ones({numel});
  auto part = torch::ones({chunk});
  auto full_out = torch::zeros({chunk * n});
  auto counts = std::make_shared<std::vector<int>>(n, static_cast<int>(chunk));
  auto displs = std::make_shared<std::vector<int>>(n);
  for (int r = 0; r < n; ++r) (*displs)[r] = static_cast<int>(r * chunk);
  const int c = static_cast<int>(chunk);
  const int m = static_cast<int>(numel);
  std::vector<OpRunners> ops;
  ops.push_back({"all_reduce", 2.0,
                 [=] {
                   FULCRUM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, full.data_ptr(), m, MPI_FLOAT,
                                                   MPI_SUM, raw_comm));
                 },
                 [=] {
                   MPI_Request q;
                   FULCRUM_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, full.data_ptr(), m, MPI_FLOAT,
                                                    MPI_SUM, raw_comm, &q));
                   Wait(q);
                 },
                 [comm, full] { comm->AllReduce(full); }});
  ops.push_back({"reduce_scatter", 1.0,
                 [=] {
                   FULCRUM_MPI_CHECK(MPI_Reduce_scatter_block(full_out.data_ptr(), part.data_ptr(),
                                                              c, MPI_FLOAT, MPI_SUM, raw_comm));
                 },
                 [=] {
                   MPI_Request q;
                   FULCRUM_MPI_CHECK(MPI_Ireduce_scatter_block(
                       full_out.data_ptr(), part.data_ptr(), c, MPI_FLOAT, MPI_SUM, raw_comm, &q));
                   Wait(q);
                 },
                 [comm, full_out, part] { comm->ReduceScatter(full_out, part); }});
  ops.push_back({"all_gather", 1.0,
                 [=] {
                   FULCRUM_MPI_CHECK(MPI_Allgather(part.data_ptr(), c, MPI_FLOAT,
                                                   full_out.data_ptr(), c, MPI_FLOAT, raw_comm));
                 },
                 [=] {
                   MPI_Request q;
                   FULCRUM_MPI_CHECK(MPI_Iallgather(part.data_ptr(), c, MPI_FLOAT,
                                                    full_out.data_ptr(), c, MPI_FLOAT, raw_comm,
                                                    &q));
                   Wait(q);
                 },
                 [comm, part, full_out] { comm->AllGather(part, full_out); }});
  auto a2a_out = torch::zeros({chunk * n});
  ops.push_back(
      {"all_to_all", 1.0,
       [=] {
         FULCRUM_MPI_CHECK(MPI_Alltoallv(full_out.data_ptr(), counts->data(), displs->data(),
                                         MPI_FLOAT, a2a_out.data_ptr(), counts->data(),
                                         displs->data(), MPI_FLOAT, raw_comm));
       },
       [=] {
         MPI_Request q;
         FULCRUM_MPI_CHECK(MPI_Ialltoallv(full_out.data_ptr(), counts->data(), displs->data(),
                                          MPI_FLOAT, a2a_out.data_ptr(), counts->data(),
                                          displs->data(), MPI_FLOAT, raw_comm, &q));
         Wait(q);
       },
       [comm, full_out, a2a_out] { comm->AllToAll(full_out, a2a_out); }});
  return ops;
}

int Run(int argc, char** argv) {
  int rank = 0, n = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  FULCRUM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  const int64_t max_bytes = argc > 1 ? std::atoll(argv[1]) : (int64_t{64} << 20);
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "bench", CommOptions{});
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", std::string(comm.status().message()).c_str());
    return 1;
  }
  MPI_Comm raw_comm;
  FULCRUM_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &raw_comm));
  if (rank == 0) {
    std::printf("fulcrum_bench_comm: %d ranks, fp32, median per op; busbw in GB/s\n", n);
    std::printf("%-15s %10s %12s %12s %12s %10s %10s %9s %9s\n", "op", "bytes", "mpi_us",
                "mpi_nb_us", "fulcrum_us", "mpi_bw", "fulcrum_bw", "ovh_%", "ovh_nb_%");
  }
  for (int64_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    // About 0.5 GB moved per (op, size) and variant, 5..100 iterations.
    const int iterations =
        static_cast<int>(std::clamp<int64_t>((int64_t{512} << 20) / bytes, 5, 100));
    for (const OpRunners& op : MakeOps(comm->get(), raw_comm, bytes, n)) {
      const Timings t = Measure(op, iterations);
      const double bus = op.bus_factor * (n - 1) / n * static_cast<double>(bytes) / 1e9;
      if (rank == 0) {
        std::printf("%-15s %10lld %12.1f %12.1f %12.1f %10.2f %10.2f %9.1f %9.1f\n", op.name,
                    static_cast<long long>(bytes), t.raw * 1e6, t.raw_nonblocking * 1e6,
                    t.fulcrum * 1e6, bus / t.raw, bus / t.fulcrum,
                    100.0 * (t.fulcrum / t.raw - 1.0),
                    100.0 * (t.fulcrum / t.raw_nonblocking - 1.0));
        std::fflush(stdout);
      }
    }
  }
  FULCRUM_MPI_CHECK(MPI_Comm_free(&raw_comm));
  return 0;
}

}  // namespace
}  // namespace fulcrum::parallel

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const int rc = fulcrum::parallel::Run(argc, argv);
  MPI_Finalize();
  return rc;
}
