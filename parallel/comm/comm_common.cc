#include "parallel/comm/comm_common.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"

namespace fulcrum::parallel {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

const char* CommDtypeName(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kHalf:
      return "float16";
    case torch::kInt:
      return "int32";
    case torch::kLong:
      return "int64";
    case torch::kByte:
      return "uint8";
    default:
      return "unsupported";
  }
}

std::string DescribeOp(const OpDescription& op) {
  if (op.numel < 0) return op.op;
  std::string text = absl::StrCat(op.op, " of ", op.numel, " x ", CommDtypeName(op.dtype));
  if (op.reduce.has_value()) absl::StrAppend(&text, " (", ReduceOpName(*op.reduce), ")");
  if (op.peer >= 0) {
    const std::string_view op_name = op.op;
    const char* preposition = op_name == "send" ? " to" : op_name == "recv" ? " from" : " root";
    absl::StrAppend(&text, preposition, " rank ", op.peer);
  }
  return text;
}

std::string DescribeComm(const CommIdentity& comm) {
  return absl::StrCat("communicator '", comm.name, "' rank ", comm.rank, " of ", comm.size);
}

std::string TimeoutReason(const OpDescription& op, double timeout_seconds) {
  return absl::StrFormat(
      "%s did not complete within %.1f s: a peer rank crashed, hung, or never called it",
      DescribeOp(op), timeout_seconds);
}

std::string TimeoutMessage(const CommIdentity& comm, const OpDescription& op,
                           double timeout_seconds) {
  return absl::StrCat(DescribeComm(comm), ": ", TimeoutReason(op, timeout_seconds));
}

void CommFatal(const CommIdentity& comm, const std::string& message) {
  const std::string text = absl::StrCat(DescribeComm(comm), ": ", message);
  ::fulcrum::internal::CheckFailed(__FILE__, __LINE__, "communicator operation failed", text);
}

bool IsSupportedCommDtype(torch::ScalarType dtype) {
  return std::string_view(CommDtypeName(dtype)) != "unsupported";
}

bool IsHalfFloat(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 || dtype == torch::kHalf;
}

absl::Status ValidateCommTensor(const char* op, const char* arg, const torch::Tensor& t,
                                torch::DeviceType device) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(op, ": ", arg, " is undefined"));
  if (t.device().type() != device) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", arg, " is on ", t.device().str(),
                                                   ", this backend needs ",
                                                   c10::DeviceTypeName(device, true), " tensors"));
  }
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", arg, " is not contiguous"));
  }
  if (!IsSupportedCommDtype(t.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", arg, " has dtype ", c10::toString(t.scalar_type()),
                     " (supported: float32, float64, bfloat16, float16, int32, int64, uint8)"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePair(const char* op, const torch::Tensor& input, const torch::Tensor& output,
                          torch::DeviceType device) {
  if (auto s = ValidateCommTensor(op, "input", input, device); !s.ok()) return s;
  if (auto s = ValidateCommTensor(op, "output", output, device); !s.ok()) return s;
  if (input.scalar_type() != output.scalar_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": input is ", CommDtypeName(input.scalar_type()), " but output is ",
                     CommDtypeName(output.scalar_type())));
  }
  return absl::OkStatus();
}

absl::Status ValidateReduceScatter(const torch::Tensor& input, const torch::Tensor& output,
                                   int size, torch::DeviceType device) {
  if (auto s = ValidatePair("reduce_scatter", input, output, device); !s.ok()) return s;
  if (input.numel() != size * output.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reduce_scatter: input has ", input.numel(), " elements, expected group size ",
                     size, " x output's ", output.numel(), " = ", size * output.numel()));
  }
  return absl::OkStatus();
}

absl::Status ValidateAllGather(const torch::Tensor& input, const torch::Tensor& output, int size,
                               torch::DeviceType device) {
  if (auto s = ValidatePair("all_gather", input, output, device); !s.ok()) return s;
  if (output.numel() != size * input.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("all_gather: output has ", output.numel(), " elements, expected group size ",
                     size, " x input's ", input.numel(), " = ", size * input.numel()));
  }
  return absl::OkStatus();
}

absl::Status ValidatePeer(const char* op, const char* what, int peer, int size) {
  if (peer < 0 || peer >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", what, " ", peer, " is not a rank of a group of ", size));
  }
  return absl::OkStatus();
}

namespace {

// counts (scaled by `scale`) -> counts, displacements and total.
CountsAndDispls PrefixLayout(const std::vector<int64_t>& counts, int64_t scale) {
  CountsAndDispls layout;
  layout.counts.reserve(counts.size());
  layout.displs.reserve(counts.size());
  for (int64_t c : counts) {
    layout.displs.push_back(layout.total);
    layout.counts.push_back(c * scale);
    layout.total += c * scale;
  }
  return layout;
}

// Splits (rows): size() long, non-negative, summing to `rows`; empty ->
// equal blocks.
absl::StatusOr<std::vector<int64_t>> ResolveSplits(const char* which,
                                                   const std::vector<int64_t>& splits, int64_t rows,
                                                   int size) {
  if (splits.empty()) {
    if (rows % size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("all_to_all: ", which, " has ", rows,
                                                     " rows, not divisible by group size ", size,
                                                     " (pass split sizes for uneven blocks)"));
    }
    return std::vector<int64_t>(size, rows / size);
  }
  if (static_cast<int>(splits.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "all_to_all: ", which, " splits have ", splits.size(), " entries, group size is ", size));
  }
  for (int64_t s : splits) {
    if (s < 0) {
      return absl::InvalidArgumentError(absl::StrCat("all_to_all: ", which, " splits [",
                                                     absl::StrJoin(splits, ", "),
                                                     "] has a negative entry"));
    }
  }
  const int64_t sum = std::accumulate(splits.begin(), splits.end(), int64_t{0});
  if (sum != rows) {
    return absl::InvalidArgumentError(absl::StrCat("all_to_all: ", which, " splits [",
                                                   absl::StrJoin(splits, ", "), "] sum to ", sum,
                                                   " but the ", which, " has ", rows, " rows"));
  }
  return splits;
}

}  // namespace

absl::StatusOr<CountsAndDispls> AllGatherVLayout(const torch::Tensor& input,
                                                 const torch::Tensor& output,
                                                 const std::vector<int64_t>& counts, int rank,
                                                 int size, torch::DeviceType device) {
  if (auto s = ValidatePair("all_gather_v", input, output, device); !s.ok()) return s;
  if (static_cast<int>(counts.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat("all_gather_v: counts have ", counts.size(),
                                                   " entries, group size is ", size));
  }
  for (int64_t c : counts) {
    if (c < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "all_gather_v: counts [", absl::StrJoin(counts, ", "), "] has a negative entry"));
    }
  }
  if (counts[rank] != input.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("all_gather_v: counts[", rank, "] = ", counts[rank],
                     " but this rank's input has ", input.numel(), " elements"));
  }
  CountsAndDispls layout = PrefixLayout(counts, 1);
  if (layout.total != output.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("all_gather_v: counts [", absl::StrJoin(counts, ", "), "] sum to ",
                     layout.total, " but output has ", output.numel(), " elements"));
  }
  return layout;
}

absl::StatusOr<AllToAllLayout> AllToAllLayoutFor(const torch::Tensor& input,
                                                 const torch::Tensor& output,
                                                 const std::vector<int64_t>& output_splits,
                                                 const std::vector<int64_t>& input_splits, int size,
                                                 torch::DeviceType device) {
  if (auto s = ValidatePair("all_to_all", input, output, device); !s.ok()) return s;
  if (input.dim() < 1 || output.dim() < 1) {
    return absl::InvalidArgumentError("all_to_all: input and output need a dim 0 (rows)");
  }
  if (input.sizes().slice(1) != output.sizes().slice(1)) {
    return absl::InvalidArgumentError(absl::StrCat("all_to_all: rows of input ",
                                                   c10::str(input.sizes()), " and output ",
                                                   c10::str(output.sizes()), " differ in shape"));
  }
  int64_t trailing = 1;  // elements per row
  for (int64_t d : input.sizes().slice(1)) trailing *= d;
  auto send = ResolveSplits("input", input_splits, input.size(0), size);
  if (!send.ok()) return send.status();
  auto recv = ResolveSplits("output", output_splits, output.size(0), size);
  if (!recv.ok()) return recv.status();
  return AllToAllLayout{PrefixLayout(*send, trailing), PrefixLayout(*recv, trailing)};
}

}  // namespace fulcrum::parallel
