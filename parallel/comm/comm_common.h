// What the MPI and NCCL communicators share, so that the MPI tests cover it:
//   - argument validation (device, contiguity, dtype, output sizes, split
//     sums) and the element layouts it derives (counts and displacements),
//   - the deadline polling loop every Work::Wait() runs,
//   - the wording of fatal errors (timeouts, backend failures, bad arguments).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"

namespace fulcrum::parallel {

// Who is talking: named in every fatal message.
struct CommIdentity {
  std::string name;  // "tp", "dp", "world", ...
  int rank = 0;      // in the group
  int size = 1;
};

// One launched operation, as a fatal message names it.
struct OpDescription {
  OpDescription(const char* op_name, int64_t n = -1, torch::ScalarType type = torch::kFloat,
                std::optional<ReduceOp> reduce_op = std::nullopt, int peer_rank = -1)
      : op(op_name), numel(n), dtype(type), reduce(reduce_op), peer(peer_rank) {}
  const char* op;  // "all_reduce", "send", ...
  int64_t numel;   // elements of the main tensor; -1: none (barrier)
  torch::ScalarType dtype;
  std::optional<ReduceOp> reduce;  // reductions only
  int peer;                        // send/recv peer, broadcast root; -1: none
};

// "float32", "bfloat16", ... ("unsupported" for the rest).
const char* CommDtypeName(torch::ScalarType dtype);
// "all_reduce of 1024 x bfloat16 (sum)", "send of 8 x float32 to rank 1", "barrier".
std::string DescribeOp(const OpDescription& op);
// "communicator 'tp' rank 1 of 2"
std::string DescribeComm(const CommIdentity& comm);
// "communicator 'tp' rank 1 of 2: all_reduce of 1024 x bfloat16 (sum) did not
// complete within 2.0 s: a peer rank crashed, hung, or never called it"
std::string TimeoutMessage(const CommIdentity& comm, const OpDescription& op,
                           double timeout_seconds);
// The same without the communicator ("all_reduce of ... never called it").
std::string TimeoutReason(const OpDescription& op, double timeout_seconds);

// Ends every rank (FULCRUM_CHECK's path: message on stderr, MPI_Abort) with
// "communicator 'tp' rank 1 of 2: <message>".
[[noreturn]] void CommFatal(const CommIdentity& comm, const std::string& message);
// Bad arguments are bugs of the caller: fatal, with the validator's message.
inline void CheckCommArgs(const CommIdentity& comm, const absl::Status& status) {
  if (!status.ok()) CommFatal(comm, std::string(status.message()));
}

// ---- argument validation ----------------------------------------------------
// Every validator names the operation and the argument in its message.

// Dtypes both backends move: float32/64, bfloat16, float16, int32/64, uint8.
bool IsSupportedCommDtype(torch::ScalarType dtype);
bool IsHalfFloat(torch::ScalarType dtype);  // bfloat16 or float16

// Defined, on `device`, contiguous, of a supported dtype.
absl::Status ValidateCommTensor(const char* op, const char* arg, const torch::Tensor& t,
                                torch::DeviceType device);
// input/output of one collective: both valid and of the same dtype.
absl::Status ValidatePair(const char* op, const torch::Tensor& input, const torch::Tensor& output,
                          torch::DeviceType device);
// input.numel() == size * output.numel().
absl::Status ValidateReduceScatter(const torch::Tensor& input, const torch::Tensor& output,
                                   int size, torch::DeviceType device);
// output.numel() == size * input.numel().
absl::Status ValidateAllGather(const torch::Tensor& input, const torch::Tensor& output, int size,
                               torch::DeviceType device);
// 0 <= peer < size (`what`: "peer", "root").
absl::Status ValidatePeer(const char* op, const char* what, int peer, int size);

// Per-rank element counts and displacements of a "v" collective.
struct CountsAndDispls {
  std::vector<int64_t> counts;  // [size]
  std::vector<int64_t> displs;  // [size], exclusive prefix sums of counts
  int64_t total = 0;
};
// Uneven all-gather: counts.size() == size, counts >= 0, counts[rank] ==
// input.numel(), sum(counts) == output.numel().
absl::StatusOr<CountsAndDispls> AllGatherVLayout(const torch::Tensor& input,
                                                 const torch::Tensor& output,
                                                 const std::vector<int64_t>& counts, int rank,
                                                 int size, torch::DeviceType device);

// all_to_all_single in elements (split rows x elements per row).
struct AllToAllLayout {
  CountsAndDispls send;  // blocks of input sent to each rank
  CountsAndDispls recv;  // blocks of output received from each rank
};
// input/output have >= 1 dim and equal trailing shapes; splits (rows) are
// either empty (equal blocks: dim 0 divisible by size) or size() long,
// non-negative, summing to dim 0 of input resp. output.
absl::StatusOr<AllToAllLayout> AllToAllLayoutFor(const torch::Tensor& input,
                                                 const torch::Tensor& output,
                                                 const std::vector<int64_t>& output_splits,
                                                 const std::vector<int64_t>& input_splits, int size,
                                                 torch::DeviceType device);

// ---- waiting ----------------------------------------------------------------

// Calls test() until it returns true (-> true) or `timeout_seconds` pass
// (-> false). NOTE: MPI's non-blocking collectives progress only inside MPI
// calls, so the first 50 ms spin without sleeping (a sleep there costs
// bandwidth); then it yields, and after 1 s it sleeps 100 us between tests.
template <typename TestFn>
bool PollUntilDone(TestFn&& test, double timeout_seconds) {
  if (test()) return true;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  while (true) {
    if (test()) return true;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (elapsed > timeout_seconds) return false;
    if (elapsed > 1.0) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    } else if (elapsed > 0.05) {
      std::this_thread::yield();
    }
  }
}

}  // namespace fulcrum::parallel
