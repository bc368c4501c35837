#include "parallel/comm/mpi_communicator.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel {
namespace {

// Tag of the point-to-point messages a large-count collective falls back
// to; user send/recv use tag 0.
constexpr int kCollectiveTag = 1;

// A launched MPI operation: its requests, the tensors they touch (kept
// alive until complete) and what to do on completion (copy back from fp32
// staging). Count/displacement arrays of v-collectives live here too: MPI
// reads them until the operation completes.
class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<const CommIdentity> identity, OpDescription op, double timeout_seconds)
      : identity_(std::move(identity)), op_(op), timeout_seconds_(timeout_seconds) {}
  ~MpiWork() override {
    if (!done_) Wait();
  }

  void Wait() override {
    if (!PollUntilDone([this] { return Test(); }, timeout_seconds_)) {
      CommFatal(*identity_, TimeoutReason(op_, timeout_seconds_));
    }
  }

  bool Test() override {
    if (done_) return true;
    int flag = 1;
    if (!requests_.empty()) {
      Check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag,
                        MPI_STATUSES_IGNORE),
            "MPI_Testall");
    }
    if (flag == 0) return false;
    done_ = true;
    if (on_complete_) on_complete_();
    on_complete_ = nullptr;
    tensors_.clear();
    return true;
  }

  void Check(int rc, const char* call) const {
    if (rc != MPI_SUCCESS) {
      CommFatal(*identity_,
                absl::StrCat(call, " for ", DescribeOp(op_), " failed: ", MpiErrorString(rc)));
    }
  }
  MPI_Request* NewRequest() {
    requests_.push_back(MPI_REQUEST_NULL);
    return &requests_.back();
  }
  void Reserve(size_t n) { requests_.reserve(requests_.size() + n); }
  void Keep(torch::Tensor t) { tensors_.push_back(std::move(t)); }
  void OnComplete(std::function<void()> f) { on_complete_ = std::move(f); }
  std::vector<int>& IntArray() { return int_arrays_.emplace_back(); }

 private:
  std::shared_ptr<const CommIdentity> identity_;
  OpDescription op_;
  double timeout_seconds_;
  // NOTE: NewRequest() pointers are used right away, before the next push.
  std::vector<MPI_Request> requests_;
  std::vector<torch::Tensor> tensors_;
  std::function<void()> on_complete_;
  std::deque<std::vector<int>> int_arrays_;  // deque: references stay valid
  bool done_ = false;
};

MPI_Datatype MpiTypeFor(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat:
      return MPI_FLOAT;
    case torch::kDouble:
      return MPI_DOUBLE;
    case torch::kInt:
      return MPI_INT32_T;
    case torch::kLong:
      return MPI_INT64_T;
    case torch::kByte:
      return MPI_UINT8_T;
    case torch::kBFloat16:
    case torch::kHalf:
      return MPI_UINT16_T;  // moved as 2-byte words
    default:
      FULCRUM_CHECK(false, "no MPI type for ", c10::toString(dtype));
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op MpiOpFor(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// kNative 16-bit reduction: each element is widened to fp32, combined and
// rounded back (round to nearest even), at every hop of MPI's algorithm.
template <typename Half, ReduceOp kOp>
void HalfReduce(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const Half* a = static_cast<const Half*>(in);
  Half* b = static_cast<Half*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]);
    const float y = static_cast<float>(b[i]);
    float r = 0.0f;
    if constexpr (kOp == ReduceOp::kSum) {
      r = x + y;
    } else if constexpr (kOp == ReduceOp::kMax) {
      r = std::max(x, y);
    } else {
      r = std::min(x, y);
    }
    b[i] = Half(r);
  }
}

void* BytePtr(const torch::Tensor& t, int64_t element_offset = 0) {
  return static_cast<char*>(t.data_ptr()) + element_offset * t.element_size();
}

// Posts one Isend (is_send) or Irecv per chunk of at most max_count elements.
void PostP2pChunks(MpiWork& work, bool is_send, void* data, int64_t count, int64_t element_size,
                   MPI_Datatype type, int peer, int tag, MPI_Comm comm, int64_t max_count) {
  for (int64_t offset = 0; offset < count || (count == 0 && offset == 0);) {
    const int n = static_cast<int>(std::min(count - offset, max_count));
    char* ptr = static_cast<char*>(data) + offset * element_size;
    if (is_send) {
      work.Check(MPI_Isend(ptr, n, type, peer, tag, comm, work.NewRequest()), "MPI_Isend");
    } else {
      work.Check(MPI_Irecv(ptr, n, type, peer, tag, comm, work.NewRequest()), "MPI_Irecv");
    }
    offset += std::max(n, 1);
  }
}

// A "v" exchange as point-to-point messages: send[r] elements of `input` at
// send displacement r to rank r, recv likewise (large counts only).
void PostExchange(MpiWork& work, const torch::Tensor& input, const CountsAndDispls& send,
                  const torch::Tensor& output, const CountsAndDispls& recv, MPI_Comm comm,
                  int64_t max_count) {
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  const int64_t esize = input.element_size();
  for (size_t r = 0; r < recv.counts.size(); ++r) {
    if (recv.counts[r] == 0) continue;
    PostP2pChunks(work, false, BytePtr(output, recv.displs[r]), recv.counts[r], esize, type,
                  static_cast<int>(r), kCollectiveTag, comm, max_count);
  }
  for (size_t r = 0; r < send.counts.size(); ++r) {
    if (send.counts[r] == 0) continue;
    PostP2pChunks(work, true, BytePtr(input, send.displs[r]), send.counts[r], esize, type,
                  static_cast<int>(r), kCollectiveTag, comm, max_count);
  }
}

// Counts and displacements as MPI's int arrays, or false when one does not fit.
bool FitsInt(const CountsAndDispls& layout, int64_t max_count) {
  for (size_t r = 0; r < layout.counts.size(); ++r) {
    if (layout.counts[r] > max_count || layout.displs[r] > max_count) return false;
  }
  return true;
}
std::vector<int>& ToInts(MpiWork& work, const std::vector<int64_t>& values) {
  std::vector<int>& out = work.IntArray();
  out.assign(values.begin(), values.end());
  return out;
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm group, std::string name, CommOptions options,
                                 int64_t max_count_per_call)
    : options_(options), max_count_(max_count_per_call) {
  FULCRUM_CHECK(max_count_ >= 1, "max_count_per_call=", max_count_);
  FULCRUM_MPI_CHECK(MPI_Comm_dup(group, &comm_));
  FULCRUM_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  auto identity = std::make_shared<CommIdentity>();
  identity->name = std::move(name);
  FULCRUM_MPI_CHECK(MPI_Comm_rank(comm_, &identity->rank));
  FULCRUM_MPI_CHECK(MPI_Comm_size(comm_, &identity->size));
  identity_ = std::move(identity);
  watchdog_ = std::make_unique<DeadlineWatchdog>(identity_, options_.timeout_seconds);
  using BF = c10::BFloat16;
  using FP = c10::Half;
  MPI_User_function* fns[2][3] = {{HalfReduce<BF, ReduceOp::kSum>, HalfReduce<BF, ReduceOp::kMax>,
                                   HalfReduce<BF, ReduceOp::kMin>},
                                  {HalfReduce<FP, ReduceOp::kSum>, HalfReduce<FP, ReduceOp::kMax>,
                                   HalfReduce<FP, ReduceOp::kMin>}};
  for (int h = 0; h < 2; ++h) {
    for (int o = 0; o < 3; ++o) {
      FULCRUM_MPI_CHECK(MPI_Op_create(fns[h][o], /*commute=*/1, &half_ops_[h][o]));
    }
  }
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (auto& ops : half_ops_) {
    for (MPI_Op& op : ops) MPI_Op_free(&op);
  }
  MPI_Comm_free(&comm_);
}

bool MpiCommunicator::StagesHalf(torch::ScalarType dtype) const {
  return IsHalfFloat(dtype) && options_.half_reduction == HalfPrecisionReduction::kFp32Staging;
}

MpiCommunicator::ReduceCall MpiCommunicator::ReduceCallFor(torch::ScalarType dtype,
                                                           ReduceOp op) const {
  if (IsHalfFloat(dtype)) {
    const int h = dtype == torch::kBFloat16 ? 0 : 1;
    return {MPI_UINT16_T, half_ops_[h][static_cast<int>(op)]};
  }
  return {MpiTypeFor(dtype), MpiOpFor(op)};
}

void MpiCommunicator::CheckCall(int rc, const char* call, const OpDescription& op) const {
  if (rc != MPI_SUCCESS) {
    CommFatal(*identity_,
              absl::StrCat(call, " for ", DescribeOp(op), " failed: ", MpiErrorString(rc)));
  }
}

void MpiCommunicator::AllReduce(torch::Tensor t, ReduceOp op) {
  CheckCommArgs(*identity_, ValidateCommTensor("all_reduce", "tensor", t, torch::kCPU));
  if (t.numel() > max_count_) return AllReduceAsync(t, op)->Wait();
  const OpDescription desc{"all_reduce", t.numel(), t.scalar_type(), op};
  torch::Tensor buffer = StagesHalf(t.scalar_type()) ? t.to(torch::kFloat) : t;
  const ReduceCall call = ReduceCallFor(buffer.scalar_type(), op);
  {
    DeadlineWatchdog::Scope armed(*watchdog_, desc);
    CheckCall(MPI_Allreduce(MPI_IN_PLACE, buffer.data_ptr(), static_cast<int>(buffer.numel()),
                            call.type, call.op, comm_),
              "MPI_Allreduce", desc);
  }
  if (!buffer.is_same(t)) t.copy_(buffer);
}

void MpiCommunicator::ReduceScatter(torch::Tensor input, torch::Tensor output, ReduceOp op) {
  CheckCommArgs(*identity_, ValidateReduceScatter(input, output, size(), torch::kCPU));
  if (output.numel() > max_count_) return ReduceScatterAsync(input, output, op)->Wait();
  const OpDescription desc{"reduce_scatter", input.numel(), input.scalar_type(), op};
  const bool staged = StagesHalf(input.scalar_type());
  const torch::Tensor in = staged ? input.to(torch::kFloat) : input;
  torch::Tensor out =
      staged ? torch::empty(output.sizes(), output.options().dtype(torch::kFloat)) : output;
  const ReduceCall call = ReduceCallFor(in.scalar_type(), op);
  {
    DeadlineWatchdog::Scope armed(*watchdog_, desc);
    CheckCall(MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(out.numel()),
                                       call.type, call.op, comm_),
              "MPI_Reduce_scatter_block", desc);
  }
  if (staged) output.copy_(out);
}

void MpiCommunicator::AllGather(torch::Tensor input, torch::Tensor output) {
  CheckCommArgs(*identity_, ValidateAllGather(input, output, size(), torch::kCPU));
  if (input.numel() > max_count_) return AllGatherAsync(input, output)->Wait();
  const OpDescription desc{"all_gather", input.numel(), input.scalar_type()};
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  const int count = static_cast<int>(input.numel());
  DeadlineWatchdog::Scope armed(*watchdog_, desc);
  CheckCall(MPI_Allgather(input.data_ptr(), count, type, output.data_ptr(), count, type, comm_),
            "MPI_Allgather", desc);
}

void MpiCommunicator::AllToAll(torch::Tensor input, torch::Tensor output,
                               const std::vector<int64_t>& output_splits,
                               const std::vector<int64_t>& input_splits) {
  auto layout = AllToAllLayoutFor(input, output, output_splits, input_splits, size(), torch::kCPU);
  CheckCommArgs(*identity_, layout.status());
  if (!FitsInt(layout->send, max_count_) || !FitsInt(layout->recv, max_count_)) {
    return AllToAllAsync(input, output, output_splits, input_splits)->Wait();
  }
  const OpDescription desc{"all_to_all", input.numel(), input.scalar_type()};
  const std::vector<int> sc(layout->send.counts.begin(), layout->send.counts.end());
  const std::vector<int> sd(layout->send.displs.begin(), layout->send.displs.end());
  const std::vector<int> rc(layout->recv.counts.begin(), layout->recv.counts.end());
  const std::vector<int> rd(layout->recv.displs.begin(), layout->recv.displs.end());
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  DeadlineWatchdog::Scope armed(*watchdog_, desc);
  CheckCall(MPI_Alltoallv(input.data_ptr(), sc.data(), sd.data(), type, output.data_ptr(),
                          rc.data(), rd.data(), type, comm_),
            "MPI_Alltoallv", desc);
}

WorkHandle MpiCommunicator::AllReduceAsync(torch::Tensor t, ReduceOp op) {
  CheckCommArgs(*identity_, ValidateCommTensor("all_reduce", "tensor", t, torch::kCPU));
  auto work = std::make_unique<MpiWork>(identity_,
                                        OpDescription{"all_reduce", t.numel(), t.scalar_type(), op},
                                        options_.timeout_seconds);
  torch::Tensor buffer = t;
  if (StagesHalf(t.scalar_type())) {
    buffer = t.to(torch::kFloat);
    work->OnComplete([t, buffer]() mutable { t.copy_(buffer); });
    work->Keep(buffer);
  }
  work->Keep(t);
  const ReduceCall call = ReduceCallFor(buffer.scalar_type(), op);
  const int64_t n = buffer.numel();
  work->Reserve(n / max_count_ + 1);
  for (int64_t offset = 0; offset < n || (n == 0 && offset == 0);) {
    const int count = static_cast<int>(std::min(n - offset, max_count_));
    work->Check(MPI_Iallreduce(MPI_IN_PLACE, BytePtr(buffer, offset), count, call.type, call.op,
                               comm_, work->NewRequest()),
                "MPI_Iallreduce");
    offset += std::max(count, 1);
  }
  return work;
}

WorkHandle MpiCommunicator::ReduceScatterAsync(torch::Tensor input, torch::Tensor output,
                                               ReduceOp op) {
  CheckCommArgs(*identity_, ValidateReduceScatter(input, output, size(), torch::kCPU));
  auto work = std::make_unique<MpiWork>(
      identity_, OpDescription{"reduce_scatter", input.numel(), input.scalar_type(), op},
      options_.timeout_seconds);
  torch::Tensor in = input, out = output;
  if (StagesHalf(input.scalar_type())) {
    in = input.to(torch::kFloat);
    out = torch::empty(output.sizes(), output.options().dtype(torch::kFloat));
    work->OnComplete([output, out]() mutable { output.copy_(out); });
  }
  work->Keep(input);
  work->Keep(output);
  work->Keep(in);
  work->Keep(out);
  const ReduceCall call = ReduceCallFor(in.scalar_type(), op);
  const int64_t count = out.numel();
  if (count <= max_count_) {
    work->Check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(count),
                                          call.type, call.op, comm_, work->NewRequest()),
                "MPI_Ireduce_scatter_block");
    return work;
  }
  // Large count: rank r's block reduced to root r, chunk by chunk.
  for (int root = 0; root < size(); ++root) {
    for (int64_t offset = 0; offset < count;) {
      const int n = static_cast<int>(std::min(count - offset, max_count_));
      work->Check(MPI_Ireduce(BytePtr(in, root * count + offset), BytePtr(out, offset), n,
                              call.type, call.op, root, comm_, work->NewRequest()),
                  "MPI_Ireduce");
      offset += n;
    }
  }
  return work;
}

WorkHandle MpiCommunicator::AllGatherAsync(torch::Tensor input, torch::Tensor output) {
  CheckCommArgs(*identity_, ValidateAllGather(input, output, size(), torch::kCPU));
  auto work = std::make_unique<MpiWork>(
      identity_, OpDescription{"all_gather", input.numel(), input.scalar_type()},
      options_.timeout_seconds);
  work->Keep(input);
  work->Keep(output);
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  const int64_t count = input.numel();
  if (count <= max_count_) {
    work->Check(MPI_Iallgather(input.data_ptr(), static_cast<int>(count), type, output.data_ptr(),
                               static_cast<int>(count), type, comm_, work->NewRequest()),
                "MPI_Iallgather");
    return work;
  }
  const CountsAndDispls send_layout{std::vector<int64_t>(size(), count),
                                    std::vector<int64_t>(size(), 0), size() * count};
  std::vector<int64_t> counts(size(), count);
  CountsAndDispls recv_layout{counts, {}, 0};
  for (int r = 0; r < size(); ++r) recv_layout.displs.push_back(r * count);
  PostExchange(*work, input, send_layout, output, recv_layout, comm_, max_count_);
  return work;
}

WorkHandle MpiCommunicator::AllGatherVAsync(torch::Tensor input, torch::Tensor output,
                                            const std::vector<int64_t>& counts) {
  auto layout = AllGatherVLayout(input, output, counts, rank(), size(), torch::kCPU);
  CheckCommArgs(*identity_, layout.status());
  auto work = std::make_unique<MpiWork>(
      identity_, OpDescription{"all_gather_v", output.numel(), input.scalar_type()},
      options_.timeout_seconds);
  work->Keep(input);
  work->Keep(output);
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  if (FitsInt(*layout, max_count_)) {
    const std::vector<int>& c = ToInts(*work, layout->counts);
    const std::vector<int>& d = ToInts(*work, layout->displs);
    work->Check(
        MPI_Iallgatherv(input.data_ptr(), static_cast<int>(input.numel()), type, output.data_ptr(),
                        c.data(), d.data(), type, comm_, work->NewRequest()),
        "MPI_Iallgatherv");
    return work;
  }
  const CountsAndDispls send_layout{std::vector<int64_t>(size(), input.numel()),
                                    std::vector<int64_t>(size(), 0), 0};
  PostExchange(*work, input, send_layout, output, *layout, comm_, max_count_);
  return work;
}

WorkHandle MpiCommunicator::AllToAllAsync(torch::Tensor input, torch::Tensor output,
                                          const std::vector<int64_t>& output_splits,
                                          const std::vector<int64_t>& input_splits) {
  auto layout = AllToAllLayoutFor(input, output, output_splits, input_splits, size(), torch::kCPU);
  CheckCommArgs(*identity_, layout.status());
  auto work = std::make_unique<MpiWork>(
      identity_, OpDescription{"all_to_all", input.numel(), input.scalar_type()},
      options_.timeout_seconds);
  work->Keep(input);
  work->Keep(output);
  const MPI_Datatype type = MpiTypeFor(input.scalar_type());
  if (FitsInt(layout->send, max_count_) && FitsInt(layout->recv, max_count_)) {
    const std::vector<int>& sc = ToInts(*work, layout->send.counts);
    const std::vector<int>& sd = ToInts(*work, layout->send.displs);
    const std::vector<int>& rc = ToInts(*work, layout->recv.counts);
    const std::vector<int>& rd = ToInts(*work, layout->recv.displs);
    work->Check(MPI_Ialltoallv(input.data_ptr(), sc.data(), sd.data(), type, output.data_ptr(),
                               rc.data(), rd.data(), type, comm_, work->NewRequest()),
                "MPI_Ialltoallv");
    return work;
  }
  PostExchange(*work, input, layout->send, output, layout->recv, comm_, max_count_);
  return work;
}

WorkHandle MpiCommunicator::BroadcastAsync(torch::Tensor t, int root) {
  CheckCommArgs(*identity_, ValidateCommTensor("broadcast", "tensor", t, torch::kCPU));
  CheckCommArgs(*identity_, ValidatePeer("broadcast", "root", root, size()));
  OpDescription description{"broadcast", t.numel(), t.scalar_type()};
  description.peer = root;
  auto work = std::make_unique<MpiWork>(identity_, description, options_.timeout_seconds);
  work->Keep(t);
  const MPI_Datatype type = MpiTypeFor(t.scalar_type());
  const int64_t n = t.numel();
  for (int64_t offset = 0; offset < n || (n == 0 && offset == 0);) {
    const int count = static_cast<int>(std::min(n - offset, max_count_));
    work->Check(MPI_Ibcast(BytePtr(t, offset), count, type, root, comm_, work->NewRequest()),
                "MPI_Ibcast");
    offset += std::max(count, 1);
  }
  return work;
}

WorkHandle MpiCommunicator::SendAsync(torch::Tensor t, int peer) {
  return PointToPoint(/*is_send=*/true, std::move(t), peer);
}

WorkHandle MpiCommunicator::RecvAsync(torch::Tensor t, int peer) {
  return PointToPoint(/*is_send=*/false, std::move(t), peer);
}

WorkHandle MpiCommunicator::PointToPoint(bool is_send, torch::Tensor t, int peer) {
  const char* op = is_send ? "send" : "recv";
  CheckCommArgs(*identity_, ValidateCommTensor(op, "tensor", t, torch::kCPU));
  CheckCommArgs(*identity_, ValidatePeer(op, "peer", peer, size()));
  OpDescription description{op, t.numel(), t.scalar_type()};
  description.peer = peer;
  auto work = std::make_unique<MpiWork>(identity_, description, options_.timeout_seconds);
  if (group_depth_ > 0) {
    pending_.push_back({is_send, t, peer});
    return work;  // no requests: complete at once
  }
  work->Keep(t);
  PostP2pChunks(*work, is_send, t.data_ptr(), t.numel(), t.element_size(),
                MpiTypeFor(t.scalar_type()), peer, 0, comm_, max_count_);
  return work;
}

void MpiCommunicator::Barrier() {
  MpiWork work(identity_, OpDescription{"barrier"}, options_.timeout_seconds);
  work.Check(MPI_Ibarrier(comm_, work.NewRequest()), "MPI_Ibarrier");
  work.Wait();
}

void MpiCommunicator::GroupStart() { ++group_depth_; }

WorkHandle MpiCommunicator::GroupEnd() {
  FULCRUM_CHECK(group_depth_ > 0, DescribeComm(*identity_), ": GroupEnd without GroupStart");
  --group_depth_;
  int64_t elements = 0;
  for (const PendingP2p& p : pending_) elements += p.tensor.numel();
  auto work = std::make_unique<MpiWork>(
      identity_,
      OpDescription{"p2p group", elements,
                    pending_.empty() ? torch::kFloat : pending_.front().tensor.scalar_type()},
      options_.timeout_seconds);
  if (group_depth_ > 0) return work;  // the outermost group launches
  // Receives first: a message then finds its buffer posted.
  for (int pass = 0; pass < 2; ++pass) {
    for (const PendingP2p& p : pending_) {
      if (p.is_send != (pass == 1)) continue;
      work->Keep(p.tensor);
      PostP2pChunks(*work, p.is_send, p.tensor.data_ptr(), p.tensor.numel(),
                    p.tensor.element_size(), MpiTypeFor(p.tensor.scalar_type()), p.peer, 0, comm_,
                    max_count_);
    }
  }
  pending_.clear();
  return work;
}

}  // namespace fulcrum::parallel
