#include "parallel/runtime/world.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel {

absl::StatusOr<std::unique_ptr<World>> World::Init(int* argc, char*** argv) {
  int initialized = 0;
  FULCRUM_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    FULCRUM_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  }
  // Errors are reported by our checks, with the call named, not by MPI's
  // default handler.
  FULCRUM_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  int rank = 0, size = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  FULCRUM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  MPI_Comm node;
  FULCRUM_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int local_rank = 0, local_size = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_rank(node, &local_rank));
  FULCRUM_MPI_CHECK(MPI_Comm_size(node, &local_size));
  FULCRUM_MPI_CHECK(MPI_Comm_free(&node));
  return std::unique_ptr<World>(new World(rank, size, local_rank, local_size));
}

World::~World() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

absl::StatusOr<torch::Device> World::DeviceFor(const std::string& kind) const {
  if (kind == "cpu") return torch::Device(torch::kCPU);
  if (kind == "cuda") {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          "device: cuda requested but this LibTorch sees no CUDA device (build with a "
          "CUDA LibTorch, or set device: cpu)");
    }
    const int count = static_cast<int>(torch::cuda::device_count());
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank_ % count));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device: unknown device '", kind, "' (expected cpu or cuda)"));
}

int World::CpuThreadsPerRank() const {
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env != nullptr && std::atoi(env) > 0) {
    return std::atoi(env);
  }
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_size_));
}

void World::Barrier() const { FULCRUM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

absl::Status World::AgreeOn(const absl::Status& local) const {
  if (size_ == 1) return local;
  // Lowest failing rank wins; its code and message are broadcast.
  const int mine = local.ok() ? size_ : rank_;
  int first = size_;
  FULCRUM_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (first == size_) return absl::OkStatus();
  std::string message = local.ok() ? "" : std::string(local.message());
  int code = static_cast<int>(local.code());
  int length = static_cast<int>(message.size());
  FULCRUM_MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, first, MPI_COMM_WORLD));
  FULCRUM_MPI_CHECK(MPI_Bcast(&length, 1, MPI_INT, first, MPI_COMM_WORLD));
  message.resize(length);
  FULCRUM_MPI_CHECK(MPI_Bcast(message.data(), length, MPI_CHAR, first, MPI_COMM_WORLD));
  if (rank_ != first) message = absl::StrCat("rank ", first, ": ", message);
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

std::vector<std::string> World::AllGatherStrings(const std::string& mine) const {
  if (size_ == 1) return {mine};
  const int length = static_cast<int>(mine.size());
  std::vector<int> lengths(size_), displacements(size_, 0);
  FULCRUM_MPI_CHECK(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD));
  for (int r = 1; r < size_; ++r) displacements[r] = displacements[r - 1] + lengths[r - 1];
  std::string all(static_cast<size_t>(displacements.back() + lengths.back()), '\0');
  FULCRUM_MPI_CHECK(MPI_Allgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(),
                                   displacements.data(), MPI_CHAR, MPI_COMM_WORLD));
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) out.push_back(all.substr(displacements[r], lengths[r]));
  return out;
}

void World::Abort(const absl::Status& status, int code) const {
  std::fprintf(stderr, "[fulcrum r%d] error: %s\n", rank_, std::string(status.message()).c_str());
  std::fflush(stderr);
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  MPI_Finalize();
  std::exit(code);
}

}  // namespace fulcrum::parallel
