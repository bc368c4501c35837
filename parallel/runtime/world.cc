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

// One tag per kind of exchange: ranks that reach different exchanges (a
// bug) wait for each other until the deadline instead of reading one
// exchange's message as the other's.
constexpr int kAgreeTag = 1;
constexpr int kGatherTag = 2;

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

// Strings as one message: their count and lengths (8 bytes each), then
// their bytes.
std::string PackStrings(const std::vector<std::string>& strings) {
  std::vector<int64_t> head{static_cast<int64_t>(strings.size())};
  for (const std::string& s : strings) head.push_back(static_cast<int64_t>(s.size()));
  std::string packed(reinterpret_cast<const char*>(head.data()), head.size() * sizeof(int64_t));
  for (const std::string& s : strings) packed += s;
  return packed;
}

std::vector<std::string> UnpackStrings(const std::string& packed) {
  int64_t count = 0;
  FULCRUM_CHECK(packed.size() >= sizeof(count), "a gathered message of ", packed.size(), " bytes");
  std::memcpy(&count, packed.data(), sizeof(count));
  size_t at = sizeof(int64_t) * static_cast<size_t>(count + 1);
  FULCRUM_CHECK(count >= 0 && packed.size() >= at, "a gathered message of ", packed.size(),
                " bytes for ", count, " strings");
  std::vector<std::string> strings;
  for (int64_t i = 0; i < count; ++i) {
    int64_t length = 0;
    std::memcpy(&length, packed.data() + sizeof(int64_t) * static_cast<size_t>(i + 1),
                sizeof(length));
    FULCRUM_CHECK(length >= 0 && at + static_cast<size_t>(length) <= packed.size(),
                  "a gathered message of ", packed.size(), " bytes cut short");
    strings.push_back(packed.substr(at, static_cast<size_t>(length)));
    at += static_cast<size_t>(length);
  }
  return strings;
}

// Polls `ready` until it says true or `deadline` passes (false then),
// calling `report` with the seconds waited once a minute. Backs off from
// 50 us to 10 ms between polls: an exchange among ranks that arrive
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

// Whether a non-blocking operation has completed (it is then freed).
bool Done(MPI_Request* request) {
  int flag = 0;
  FULCRUM_MPI_CHECK(MPI_Test(request, &flag, MPI_STATUS_IGNORE));
  return flag != 0;
}

// The next message tagged `tag` from `source` (MPI_ANY_SOURCE: any rank),
// if one has arrived; *sender = the rank that sent it.
std::optional<std::string> TryReceive(MPI_Comm comm, int source, int tag, int* sender) {
  int flag = 0;
  MPI_Status probed;
  FULCRUM_MPI_CHECK(MPI_Iprobe(source, tag, comm, &flag, &probed));
  if (!flag) return std::nullopt;
  int bytes = 0;
  FULCRUM_MPI_CHECK(MPI_Get_count(&probed, MPI_BYTE, &bytes));
  std::string packed(static_cast<size_t>(bytes), '\0');
  FULCRUM_MPI_CHECK(
      MPI_Recv(packed.data(), bytes, MPI_BYTE, probed.MPI_SOURCE, tag, comm, MPI_STATUS_IGNORE));
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

std::string World::ThroughRoot(const std::string& mine, int tag, absl::Duration timeout,
                               const std::string& point, const RootAnswer& answer) const {
  const absl::Time deadline = absl::Now() + timeout;
  const std::string within = absl::StrCat(" within ", absl::FormatDuration(timeout),
                                          " (stopped, hung, or stuck on a filesystem); ending "
                                          "every rank");
  std::string reply;
  // Rank 0's reply reaches every rank as a broadcast of its size, then of
  // its bytes: a tree, not one send per rank (a gathered checkpoint plan is
  // every rank's part). Rank 0 sees its broadcasts end once the ranks below
  // it have taken them; the others, once rank 0 has sent.
  int64_t reply_size = 0;
  MPI_Request size_sent = MPI_REQUEST_NULL;
  MPI_Request bytes_sent = MPI_REQUEST_NULL;
  const auto broadcast_bytes = [&] {
    reply.resize(static_cast<size_t>(reply_size));
    FULCRUM_MPI_CHECK(MPI_Ibcast(reply.data(), static_cast<int>(reply_size), MPI_BYTE, 0,
                                 agree_comm_, &bytes_sent));
  };
  FULCRUM_CHECK(mine.size() < (1u << 31) - 1, "a message of ", mine.size(), " bytes to rank 0");

  if (rank_ == 0) {
    std::vector<std::string> parts(size_);
    std::vector<bool> arrived(size_, false);
    parts[0] = mine;
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
            std::optional<std::string> part = TryReceive(agree_comm_, MPI_ANY_SOURCE, tag, &sender);
            if (!part) return false;
            FULCRUM_CHECK(!arrived[sender], "rank ", sender, " sent twice to ", point);
            parts[sender] = std::move(*part);
            arrived[sender] = true;
            --missing;
          }
          return true;
        },
        [&](double seconds) {
          std::fprintf(stderr, "[fulcrum r0] waiting %.0f s for %s to reach %s\n", seconds,
                       RankList(missing_ranks()).c_str(), point.c_str());
          std::fflush(stderr);
        });
    if (!all) {
      Abort(absl::DeadlineExceededError(
          absl::StrCat(RankList(missing_ranks()), " did not reach ", point, within)));
    }
    reply = answer(std::move(parts));
    reply_size = static_cast<int64_t>(reply.size());
    FULCRUM_CHECK(reply_size < (int64_t{1} << 31) - 1, "an answer of ", reply_size, " bytes");
    FULCRUM_MPI_CHECK(MPI_Ibcast(&reply_size, 1, MPI_INT64_T, 0, agree_comm_, &size_sent));
    broadcast_bytes();
    const bool delivered = PollUntil(
        deadline, [&] { return Done(&size_sent) && Done(&bytes_sent); }, [](double) {});
    if (!delivered) {
      Abort(absl::DeadlineExceededError(
          absl::StrCat("a rank did not take its answer at ", point, within)));
    }
    return reply;
  }

  MPI_Request sent;
  FULCRUM_MPI_CHECK(
      MPI_Isend(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, 0, tag, agree_comm_, &sent));
  FULCRUM_MPI_CHECK(MPI_Ibcast(&reply_size, 1, MPI_INT64_T, 0, agree_comm_, &size_sent));
  bool sized = false;
  const bool answered = PollUntil(
      deadline,
      [&] {
        // The send ends before the answer can start: rank 0 answers once
        // it has every rank's part.
        if (sent != MPI_REQUEST_NULL && !Done(&sent)) return false;
        if (!sized) {
          if (!Done(&size_sent)) return false;
          sized = true;
          broadcast_bytes();
        }
        return Done(&bytes_sent);
      },
      [&](double seconds) {
        std::fprintf(stderr, "[fulcrum r%d] waiting %.0f s for rank 0 to reach %s\n", rank_,
                     seconds, point.c_str());
        std::fflush(stderr);
      });
  if (!answered) {
    Abort(absl::DeadlineExceededError(absl::StrCat("rank 0 did not answer at ", point, within)));
  }
  return reply;
}

absl::Status World::AgreeOn(const absl::Status& local, absl::Duration timeout) const {
  if (size_ == 1) return local;
  // Rank 0 answers with the first failing rank's status, or OK (which every
  // rank's is then).
  const std::string verdict =
      ThroughRoot(PackStatus(local, rank_), kAgreeTag, timeout, "the point every rank agrees at",
                  [this](std::vector<std::string> parts) {
                    for (int r = 0; r < size_; ++r) {
                      int from = 0;
                      const absl::Status status = UnpackStatus(parts[r], &from);
                      FULCRUM_CHECK(from == r, "rank ", r, "'s status names rank ", from);
                      if (!status.ok()) return std::move(parts[r]);
                    }
                    return PackStatus(absl::OkStatus(), 0);
                  });
  int first = 0;
  const absl::Status status = UnpackStatus(verdict, &first);
  return FromRank(status, first);
}

std::vector<std::string> World::AllGatherStrings(const std::string& mine,
                                                 absl::Duration timeout) const {
  if (size_ == 1) return {mine};
  return UnpackStrings(
      ThroughRoot(mine, kGatherTag, timeout, "the point every rank shares its part at",
                  [](std::vector<std::string> parts) { return PackStrings(parts); }));
}

void World::Abort(const absl::Status& status, int code) const {
  std::fprintf(stderr, "[fulcrum r%d] error: %s\n", rank_, std::string(status.message()).c_str());
  std::fflush(stderr);
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  MPI_Finalize();
  std::exit(code);
}

}  // namespace fulcrum::parallel
