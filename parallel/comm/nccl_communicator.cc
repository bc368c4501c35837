#ifdef FULCRUM_WITH_NCCL

#include "parallel/comm/nccl_communicator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"

// NOTE: Debian's CPU LibTorch ships c10/cuda headers without the generated
// cuda_cmake_macros.h: only a CUDA LibTorch has both.
#if __has_include(<c10/cuda/CUDAStream.h>) && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAStream.h>
#define FULCRUM_HAVE_C10_CUDA 1
#endif

namespace fulcrum::parallel {
namespace {

// The stream LibTorch's kernels run on.
cudaStream_t ComputeStream() {
#ifdef FULCRUM_HAVE_C10_CUDA
  return c10::cuda::getCurrentCUDAStream().stream();
#else
  return cudaStreamLegacy;
#endif
}

ncclDataType_t NcclTypeFor(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat:
      return ncclFloat32;
    case torch::kDouble:
      return ncclFloat64;
    case torch::kBFloat16:
      return ncclBfloat16;
    case torch::kHalf:
      return ncclFloat16;
    case torch::kInt:
      return ncclInt32;
    case torch::kLong:
      return ncclInt64;
    case torch::kByte:
      return ncclUint8;
    default:
      FULCRUM_CHECK(false, "no NCCL type for ", c10::toString(dtype));
  }
  return ncclFloat32;
}

ncclRedOp_t NcclOpFor(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

void* BytePtr(const torch::Tensor& t, int64_t element_offset) {
  return static_cast<char*>(t.data_ptr()) + element_offset * t.element_size();
}

std::string NcclError(ncclResult_t rc, const char* call) {
  return absl::StrCat(call, " failed: ", ncclGetErrorString(rc));
}
std::string CudaError(cudaError_t rc, const char* call) {
  return absl::StrCat(call, " failed: ", cudaGetErrorString(rc));
}

// Whether the event recorded after an operation was reached, or the NCCL
// communicator reported an asynchronous error (a peer gone, say).
absl::StatusOr<bool> OperationDone(cudaEvent_t done, ncclComm_t comm) {
  const cudaError_t state = cudaEventQuery(done);
  if (state == cudaSuccess) return true;
  if (state != cudaErrorNotReady) return absl::InternalError(CudaError(state, "cudaEventQuery"));
  ncclResult_t async_error = ncclSuccess;
  const ncclResult_t rc = ncclCommGetAsyncError(comm, &async_error);
  if (rc != ncclSuccess || (async_error != ncclSuccess && async_error != ncclInProgress)) {
    return absl::InternalError(absl::StrCat(
        "NCCL reported an error: ", ncclGetErrorString(rc != ncclSuccess ? rc : async_error)));
  }
  return false;
}

// An event recorded on the communication stream after the operation.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<const CommIdentity> identity, OpDescription op, double timeout_seconds,
           ncclComm_t comm, cudaEvent_t done, std::vector<torch::Tensor> tensors,
           CompletionWatchdog* watchdog)
      : identity_(std::move(identity)),
        op_(op),
        timeout_seconds_(timeout_seconds),
        comm_(comm),
        done_(done),
        tensors_(std::move(tensors)),
        watchdog_(watchdog) {}
  ~NcclWork() override {
    if (done_ != nullptr) Wait();
  }

  void Wait() override {
    if (done_ == nullptr) return;
    // The compute stream continues after the operation; the host does not
    // wait (a sync inside a layer would stall the kernels queued behind it).
    Check(cudaStreamWaitEvent(ComputeStream(), done_, 0), "cudaStreamWaitEvent");
    int device = 0;
    Check(cudaGetDevice(&device), "cudaGetDevice");
    const cudaEvent_t done = done_;
    const ncclComm_t comm = comm_;
    watchdog_->Watch(CompletionWatchdog::Operation{
        op_,
        [done, comm, device]() -> absl::StatusOr<bool> {
          // The watchdog's thread starts on device 0.
          if (const cudaError_t rc = cudaSetDevice(device); rc != cudaSuccess) {
            return absl::InternalError(CudaError(rc, "cudaSetDevice"));
          }
          return OperationDone(done, comm);
        },
        [done] { cudaEventDestroy(done); }, [comm] { ncclCommAbort(comm); }});
    done_ = nullptr;
    tensors_.clear();
  }

  // The host waits: the barrier's promise.
  void WaitOnHost() {
    if (done_ == nullptr) return;
    if (!PollUntilDone([this] { return Test(); }, timeout_seconds_)) {
      ncclCommAbort(comm_);
      CommFatal(*identity_, TimeoutReason(op_, timeout_seconds_));
    }
  }

  bool Test() override {
    if (done_ == nullptr) return true;
    const absl::StatusOr<bool> state = OperationDone(done_, comm_);
    if (!state.ok()) {
      ncclCommAbort(comm_);
      CommFatal(*identity_, absl::StrCat(DescribeOp(op_), ": ", state.status().message()));
    }
    if (!*state) return false;
    Check(cudaEventDestroy(done_), "cudaEventDestroy");
    done_ = nullptr;
    tensors_.clear();
    return true;
  }

 private:
  void Check(cudaError_t rc, const char* call) const {
    if (rc != cudaSuccess) {
      CommFatal(*identity_, absl::StrCat(DescribeOp(op_), ": ", CudaError(rc, call)));
    }
  }

  std::shared_ptr<const CommIdentity> identity_;
  OpDescription op_;
  double timeout_seconds_;
  ncclComm_t comm_;
  cudaEvent_t done_;  // nullptr once complete or handed to the watchdog (or for a no-op)
  std::vector<torch::Tensor> tensors_;
  CompletionWatchdog* watchdog_;  // the communicator's, which outlives its Works
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(MPI_Comm group,
                                                                       const std::string& name,
                                                                       const CommOptions& options) {
  auto identity = std::make_shared<CommIdentity>();
  identity->name = name;
  if (MPI_Comm_rank(group, &identity->rank) != MPI_SUCCESS ||
      MPI_Comm_size(group, &identity->size) != MPI_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator '", name, "': MPI_Comm_rank/size failed on its group"));
  }
  const std::string where = DescribeComm(*identity);
  // Rank 0 broadcasts the id together with whether it could make one, so a
  // failure there is an error on every rank, not a hang of the others.
  struct {
    int ok;
    ncclUniqueId id;
  } bootstrap{};
  ncclResult_t id_rc = ncclSuccess;
  if (identity->rank == 0) {
    id_rc = ncclGetUniqueId(&bootstrap.id);
    bootstrap.ok = id_rc == ncclSuccess ? 1 : 0;
  }
  if (MPI_Bcast(&bootstrap, sizeof(bootstrap), MPI_BYTE, 0, group) != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat(where, ": MPI_Bcast of the ncclUniqueId failed"));
  }
  if (bootstrap.ok == 0) {
    return absl::InternalError(
        absl::StrCat(where, ": ",
                     identity->rank == 0 ? NcclError(id_rc, "ncclGetUniqueId")
                                         : std::string("rank 0 could not make the ncclUniqueId")));
  }
  const ncclUniqueId& id = bootstrap.id;
  ncclComm_t comm = nullptr;
  if (ncclResult_t rc = ncclCommInitRank(&comm, identity->size, id, identity->rank);
      rc != ncclSuccess) {
    return absl::InternalError(absl::StrCat(where, ": ", NcclError(rc, "ncclCommInitRank")));
  }
  cudaStream_t stream = nullptr;
  if (cudaError_t rc = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      rc != cudaSuccess) {
    ncclCommDestroy(comm);
    return absl::InternalError(
        absl::StrCat(where, ": ", CudaError(rc, "cudaStreamCreateWithFlags")));
  }
  void* barrier_buffer = nullptr;
  if (cudaError_t rc = cudaMalloc(&barrier_buffer, sizeof(float)); rc != cudaSuccess) {
    cudaStreamDestroy(stream);
    ncclCommDestroy(comm);
    return absl::InternalError(absl::StrCat(where, ": ", CudaError(rc, "cudaMalloc")));
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(std::move(identity), options, comm, stream, barrier_buffer));
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<const CommIdentity> identity,
                                   CommOptions options, ncclComm_t comm, cudaStream_t stream,
                                   void* barrier_buffer)
    : identity_(std::move(identity)),
      options_(options),
      comm_(comm),
      stream_(stream),
      barrier_buffer_(barrier_buffer),
      watchdog_(std::make_unique<CompletionWatchdog>(identity_, options_.timeout_seconds)) {}

NcclCommunicator::~NcclCommunicator() {
  cudaStreamSynchronize(stream_);
  watchdog_.reset();  // its polls read comm_
  cudaFree(barrier_buffer_);
  cudaStreamDestroy(stream_);
  ncclCommDestroy(comm_);
}

void NcclCommunicator::CheckNccl(ncclResult_t rc, const char* call, const OpDescription& op) const {
  if (rc != ncclSuccess) {
    CommFatal(*identity_, absl::StrCat(DescribeOp(op), ": ", NcclError(rc, call)));
  }
}

void NcclCommunicator::CheckCuda(cudaError_t rc, const char* call, const OpDescription& op) const {
  if (rc != cudaSuccess) {
    CommFatal(*identity_, absl::StrCat(DescribeOp(op), ": ", CudaError(rc, call)));
  }
}

void NcclCommunicator::WaitForCompute(const OpDescription& op) {
  cudaEvent_t ready = nullptr;
  CheckCuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreateWithFlags",
            op);
  CheckCuda(cudaEventRecord(ready, ComputeStream()), "cudaEventRecord", op);
  CheckCuda(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent", op);
  CheckCuda(cudaEventDestroy(ready), "cudaEventDestroy", op);  // freed once reached
}

WorkHandle NcclCommunicator::Finish(const OpDescription& op, std::vector<torch::Tensor> tensors) {
  if (group_depth_ > 0) {
    for (torch::Tensor& t : tensors) group_tensors_.push_back(std::move(t));
    return std::make_unique<NcclWork>(identity_, op, options_.timeout_seconds, comm_, nullptr,
                                      std::vector<torch::Tensor>{}, watchdog_.get());
  }
  cudaEvent_t done = nullptr;
  CheckCuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreateWithFlags",
            op);
  CheckCuda(cudaEventRecord(done, stream_), "cudaEventRecord", op);
  return std::make_unique<NcclWork>(identity_, op, options_.timeout_seconds, comm_, done,
                                    std::move(tensors), watchdog_.get());
}

WorkHandle NcclCommunicator::AllReduceAsync(torch::Tensor t, ReduceOp op) {
  CheckCommArgs(*identity_, ValidateCommTensor("all_reduce", "tensor", t, torch::kCUDA));
  const OpDescription d{"all_reduce", t.numel(), t.scalar_type(), op};
  WaitForCompute(d);
  CheckNccl(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), NcclTypeFor(t.scalar_type()),
                          NcclOpFor(op), comm_, stream_),
            "ncclAllReduce", d);
  return Finish(d, {t});
}

WorkHandle NcclCommunicator::ReduceScatterAsync(torch::Tensor input, torch::Tensor output,
                                                ReduceOp op) {
  CheckCommArgs(*identity_, ValidateReduceScatter(input, output, size(), torch::kCUDA));
  const OpDescription d{"reduce_scatter", input.numel(), input.scalar_type(), op};
  WaitForCompute(d);
  CheckNccl(ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(),
                              NcclTypeFor(input.scalar_type()), NcclOpFor(op), comm_, stream_),
            "ncclReduceScatter", d);
  return Finish(d, {input, output});
}

WorkHandle NcclCommunicator::AllGatherAsync(torch::Tensor input, torch::Tensor output) {
  CheckCommArgs(*identity_, ValidateAllGather(input, output, size(), torch::kCUDA));
  const OpDescription d{"all_gather", input.numel(), input.scalar_type()};
  WaitForCompute(d);
  CheckNccl(ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(),
                          NcclTypeFor(input.scalar_type()), comm_, stream_),
            "ncclAllGather", d);
  return Finish(d, {input, output});
}

WorkHandle NcclCommunicator::AllGatherVAsync(torch::Tensor input, torch::Tensor output,
                                             const std::vector<int64_t>& counts) {
  auto layout = AllGatherVLayout(input, output, counts, rank(), size(), torch::kCUDA);
  CheckCommArgs(*identity_, layout.status());
  const OpDescription d{"all_gather_v", output.numel(), input.scalar_type()};
  const ncclDataType_t type = NcclTypeFor(input.scalar_type());
  WaitForCompute(d);
  CheckNccl(ncclGroupStart(), "ncclGroupStart", d);
  for (int r = 0; r < size(); ++r) {
    CheckNccl(ncclSend(input.data_ptr(), input.numel(), type, r, comm_, stream_), "ncclSend", d);
    CheckNccl(
        ncclRecv(BytePtr(output, layout->displs[r]), layout->counts[r], type, r, comm_, stream_),
        "ncclRecv", d);
  }
  CheckNccl(ncclGroupEnd(), "ncclGroupEnd", d);
  return Finish(d, {input, output});
}

WorkHandle NcclCommunicator::AllToAllAsync(torch::Tensor input, torch::Tensor output,
                                           const std::vector<int64_t>& output_splits,
                                           const std::vector<int64_t>& input_splits) {
  auto layout = AllToAllLayoutFor(input, output, output_splits, input_splits, size(), torch::kCUDA);
  CheckCommArgs(*identity_, layout.status());
  const OpDescription d{"all_to_all", input.numel(), input.scalar_type()};
  const ncclDataType_t type = NcclTypeFor(input.scalar_type());
  WaitForCompute(d);
  CheckNccl(ncclGroupStart(), "ncclGroupStart", d);
  for (int r = 0; r < size(); ++r) {
    CheckNccl(ncclSend(BytePtr(input, layout->send.displs[r]), layout->send.counts[r], type, r,
                       comm_, stream_),
              "ncclSend", d);
    CheckNccl(ncclRecv(BytePtr(output, layout->recv.displs[r]), layout->recv.counts[r], type, r,
                       comm_, stream_),
              "ncclRecv", d);
  }
  CheckNccl(ncclGroupEnd(), "ncclGroupEnd", d);
  return Finish(d, {input, output});
}

WorkHandle NcclCommunicator::BroadcastAsync(torch::Tensor t, int root) {
  CheckCommArgs(*identity_, ValidateCommTensor("broadcast", "tensor", t, torch::kCUDA));
  CheckCommArgs(*identity_, ValidatePeer("broadcast", "root", root, size()));
  OpDescription d{"broadcast", t.numel(), t.scalar_type()};
  d.peer = root;
  WaitForCompute(d);
  CheckNccl(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), NcclTypeFor(t.scalar_type()), root,
                          comm_, stream_),
            "ncclBroadcast", d);
  return Finish(d, {t});
}

WorkHandle NcclCommunicator::SendAsync(torch::Tensor t, int peer) {
  CheckCommArgs(*identity_, ValidateCommTensor("send", "tensor", t, torch::kCUDA));
  CheckCommArgs(*identity_, ValidatePeer("send", "peer", peer, size()));
  OpDescription d{"send", t.numel(), t.scalar_type()};
  d.peer = peer;
  if (group_depth_ == 0) WaitForCompute(d);
  CheckNccl(ncclSend(t.data_ptr(), t.numel(), NcclTypeFor(t.scalar_type()), peer, comm_, stream_),
            "ncclSend", d);
  return Finish(d, {t});
}

WorkHandle NcclCommunicator::RecvAsync(torch::Tensor t, int peer) {
  CheckCommArgs(*identity_, ValidateCommTensor("recv", "tensor", t, torch::kCUDA));
  CheckCommArgs(*identity_, ValidatePeer("recv", "peer", peer, size()));
  OpDescription d{"recv", t.numel(), t.scalar_type()};
  d.peer = peer;
  if (group_depth_ == 0) WaitForCompute(d);
  CheckNccl(ncclRecv(t.data_ptr(), t.numel(), NcclTypeFor(t.scalar_type()), peer, comm_, stream_),
            "ncclRecv", d);
  return Finish(d, {t});
}

void NcclCommunicator::Barrier() {
  const OpDescription d{"barrier"};
  WaitForCompute(d);
  CheckNccl(
      ncclAllReduce(barrier_buffer_, barrier_buffer_, 1, ncclFloat32, ncclSum, comm_, stream_),
      "ncclAllReduce", d);
  WorkHandle work = Finish(d, {});
  static_cast<NcclWork&>(*work).WaitOnHost();
}

void NcclCommunicator::GroupStart() {
  const OpDescription d{"p2p group"};
  if (group_depth_ == 0) WaitForCompute(d);
  CheckNccl(ncclGroupStart(), "ncclGroupStart", d);
  ++group_depth_;
}

WorkHandle NcclCommunicator::GroupEnd() {
  const OpDescription d{"p2p group"};
  FULCRUM_CHECK(group_depth_ > 0, DescribeComm(*identity_), ": GroupEnd without GroupStart");
  CheckNccl(ncclGroupEnd(), "ncclGroupEnd", d);
  --group_depth_;
  if (group_depth_ > 0) return Finish(d, {});
  std::vector<torch::Tensor> tensors;
  tensors.swap(group_tensors_);
  return Finish(d, std::move(tensors));
}

}  // namespace fulcrum::parallel

#endif  // FULCRUM_WITH_NCCL
