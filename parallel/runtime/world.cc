#include "parallel/runtime/world.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/check.h"
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
  MPI_Comm agree;
  FULCRUM_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &agree));
  FULCRUM_MPI_CHECK(MPI_Comm_set_errhandler(agree, MPI_ERRORS_RETURN));
  return std::unique_ptr<World>(new World(rank, size, local_rank, local_size, agree));
}

World::~World() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Comm_free(&agree_comm_);
  MPI_Finalize();
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

namespace {

constexpr int kAgreeTag = 1;

// A status as one message: the rank it comes from and its code (4 bytes
// each), then its message.
std::string PackStatus(const absl::Status& status, int32_t rank) {
  const int32_t head[2] = {rank, static_cast<int32_t>(status.code())};
  std::string packed(reinterpret_cast<const char*>(head), sizeof(head));
  packed.append(status.message().data(), status.message().size());
  return packed;
}

absl::Status UnpackStatus(const std::string& packed, int* rank) {
  int32_t head[2] = {0, 0};
  FULCRUM_CHECK(packed.size() >= sizeof(head), "an agreement message of ", packed.size(), " bytes");
  std::memcpy(head, packed.data(), sizeof(head));
  *rank = head[0];
  return absl::Status(static_cast<absl::StatusCode>(head[1]), packed.substr(sizeof(head)));
}

// Polls `ready` until it says true or `deadline` passes (false then),
// calling `report` with the seconds waited once a minute. Backs off from
// 50 us to 10 ms between polls: an agreement among ranks that arrive
// together costs microseconds, a long wait next to nothing.
bool PollUntil(absl::Time deadline, const std::function<bool()>& ready,
               const std::function<void(double)>& report) {
  const absl::Time start = absl::Now();
  absl::Time next_report = start + absl::Minutes(1);
  absl::Duration pause = absl::Microseconds(50);
  while (!ready()) {
    const absl::Time now = absl::Now();
    if (now >= deadline) return false;
    if (now >= next_report) {
      report(absl::ToDoubleSeconds(now - start));
      next_report += absl::Minutes(1);
    }
    absl::SleepFor(std::min(pause, deadline - now));
    pause = std::min(pause * 2, absl::Milliseconds(10));
  }
  return true;
}

// The next agreement message from `source` (MPI_ANY_SOURCE: any rank), if
// one has arrived; *sender = the rank that sent it.
std::optional<std::string> TryReceive(MPI_Comm comm, int source, int* sender) {
  int flag = 0;
  MPI_Status probed;
  FULCRUM_MPI_CHECK(MPI_Iprobe(source, kAgreeTag, comm, &flag, &probed));
  if (!flag) return std::nullopt;
  int bytes = 0;
  FULCRUM_MPI_CHECK(MPI_Get_count(&probed, MPI_BYTE, &bytes));
  std::string packed(static_cast<size_t>(bytes), '\0');
  FULCRUM_MPI_CHECK(MPI_Recv(packed.data(), bytes, MPI_BYTE, probed.MPI_SOURCE, kAgreeTag, comm,
                             MPI_STATUS_IGNORE));
  *sender = probed.MPI_SOURCE;
  return packed;
}

std::string RankList(const std::vector<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

}  // namespace

// The agreed status as this rank returns it: another rank's failure names
// that rank.
absl::Status World::FromRank(const absl::Status& status, int rank) const {
  if (status.ok() || rank == rank_) return status;
  return absl::Status(status.code(), absl::StrCat("rank ", rank, ": ", status.message()));
}

absl::Status World::AgreeOn(const absl::Status& local, absl::Duration timeout) const {
  if (size_ == 1) return local;
  const absl::Time deadline = absl::Now() + timeout;
  const std::string waited = absl::FormatDuration(timeout);
  // Every rank's status to rank 0; rank 0 answers each with the verdict.
  // Ranks arrive in the same order of agreements (a rank sends its next
  // status only after the verdict on the last), so one tag serves them all.
  if (rank_ == 0) {
    std::vector<absl::Status> statuses(size_);
    std::vector<bool> arrived(size_, false);
    statuses[0] = local;
    arrived[0] = true;
    int missing = size_ - 1;
    const auto missing_ranks = [&] {
      std::vector<int> ranks;
      for (int r = 0; r < size_; ++r) {
        if (!arrived[r]) ranks.push_back(r);
      }
      return ranks;
    };
    const bool all = PollUntil(
        deadline,
        [&] {
          while (missing > 0) {
            int sender = 0;
            const std::optional<std::string> packed =
                TryReceive(agree_comm_, MPI_ANY_SOURCE, &sender);
            if (!packed) return false;
            int from = 0;
            statuses[sender] = UnpackStatus(*packed, &from);
            FULCRUM_CHECK(from == sender, "rank ", sender, "'s status names rank ", from);
            arrived[sender] = true;
            --missing;
          }
          return true;
        },
        [&](double seconds) {
          std::fprintf(stderr, "[fulcrum r0] waiting %.0f s for %s to reach the same point\n",
                       seconds, RankList(missing_ranks()).c_str());
          std::fflush(stderr);
        });
    if (!all) {
      Abort(absl::DeadlineExceededError(absl::StrCat(
          RankList(missing_ranks()), " did not reach the point every rank agrees at within ",
          waited, " (stopped, hung, or stuck on a filesystem); ending every rank")));
    }
    int first = 0;
    while (first < size_ && statuses[first].ok()) ++first;
    // The first failing rank's status, or OK (which every rank's is then).
    const absl::Status& verdict = statuses[std::min(first, size_ - 1)];
    // Every rank that sent its status now waits for this answer; a long one
    // (a validation report) is delivered only as each receives it, so one
    // stopped since would hold a blocking send.
    const std::string packed = PackStatus(verdict, first);
    std::vector<MPI_Request> sends(size_ - 1);
    for (int r = 1; r < size_; ++r) {
      FULCRUM_MPI_CHECK(MPI_Isend(packed.data(), static_cast<int>(packed.size()), MPI_BYTE, r,
                                  kAgreeTag, agree_comm_, &sends[r - 1]));
    }
    const bool delivered = PollUntil(
        deadline,
        [&] {
          int flag = 0;
          FULCRUM_MPI_CHECK(MPI_Testall(static_cast<int>(sends.size()), sends.data(), &flag,
                                        MPI_STATUSES_IGNORE));
          return flag != 0;
        },
        [](double) {});
    if (!delivered) {
      Abort(absl::DeadlineExceededError(
          absl::StrCat("a rank did not take its answer at the point every rank agrees at within ",
                       waited, " (stopped, hung, or stuck on a filesystem); ending every rank")));
    }
    return FromRank(verdict, first);
  }

  const std::string mine = PackStatus(local, rank_);
  MPI_Request sent;
  FULCRUM_MPI_CHECK(MPI_Isend(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, 0, kAgreeTag,
                              agree_comm_, &sent));
  std::string answer;
  bool delivered = false;
  const bool answered = PollUntil(
      deadline,
      [&] {
        if (!delivered) {
          int flag = 0;
          FULCRUM_MPI_CHECK(MPI_Test(&sent, &flag, MPI_STATUS_IGNORE));
          if (!flag) return false;
          delivered = true;
        }
        int sender = 0;
        std::optional<std::string> packed = TryReceive(agree_comm_, 0, &sender);
        if (!packed) return false;
        answer = std::move(*packed);
        return true;
      },
      [&](double seconds) {
        std::fprintf(stderr, "[fulcrum r%d] waiting %.0f s for rank 0 to reach the same point\n",
                     rank_, seconds);
        std::fflush(stderr);
      });
  if (!answered) {
    Abort(absl::DeadlineExceededError(
        absl::StrCat("rank 0 did not answer at the point every rank agrees at within ", waited,
                     " (stopped, hung, or stuck on a filesystem); ending every rank")));
  }
  int first = 0;
  const absl::Status verdict = UnpackStatus(answer, &first);
  return FromRank(verdict, first);
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
