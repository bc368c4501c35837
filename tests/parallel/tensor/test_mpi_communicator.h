// A stand-in blocking MPI communicator for these tests until the real
// MpiCommunicator (parallel/comm, branch wip/comm) lands: all-reduce,
// reduce-scatter and all-gather of CPU fp32/fp64/bf16 tensors (16-bit via
// fp32 staging), nothing else.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "parallel/comm/communicator.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel::tensor::testing {

class TestMpiCommunicator : public Communicator {
 public:
  TestMpiCommunicator(MPI_Comm comm, std::string name) : name_(std::move(name)) {
    FULCRUM_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
    FULCRUM_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    FULCRUM_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~TestMpiCommunicator() override { MPI_Comm_free(&comm_); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "mpi"; }

  WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) override {
    torch::Tensor staged = Staged(t);
    FULCRUM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, staged.data_ptr(), Count(staged),
                                    Type(staged), Op(op), comm_));
    if (!staged.is_same(t)) t.copy_(staged);
    return Done();
  }
  WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) override {
    FULCRUM_CHECK(input.numel() == output.numel() * size_, "reduce-scatter sizes");
    torch::Tensor in = Staged(input), out = Staged(output);
    FULCRUM_MPI_CHECK(MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), Count(out), Type(out),
                                               Op(op), comm_));
    if (!out.is_same(output)) output.copy_(out);
    return Done();
  }
  WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) override {
    FULCRUM_CHECK(output.numel() == input.numel() * size_, "all-gather sizes");
    torch::Tensor in = Staged(input), out = Staged(output);
    FULCRUM_MPI_CHECK(MPI_Allgather(in.data_ptr(), Count(in), Type(in), out.data_ptr(), Count(in),
                                    Type(in), comm_));
    if (!out.is_same(output)) output.copy_(out);
    return Done();
  }
  WorkHandle AllGatherVAsync(torch::Tensor, torch::Tensor, const std::vector<int64_t>&) override {
    return Unsupported("AllGatherV");
  }
  WorkHandle AllToAllAsync(torch::Tensor, torch::Tensor, const std::vector<int64_t>&,
                           const std::vector<int64_t>&) override {
    return Unsupported("AllToAll");
  }
  WorkHandle BroadcastAsync(torch::Tensor, int) override { return Unsupported("Broadcast"); }
  WorkHandle SendAsync(torch::Tensor, int) override { return Unsupported("Send"); }
  WorkHandle RecvAsync(torch::Tensor, int) override { return Unsupported("Recv"); }
  void Barrier() override { FULCRUM_MPI_CHECK(MPI_Barrier(comm_)); }

 protected:
  void GroupStart() override { Unsupported("GroupStart"); }
  WorkHandle GroupEnd() override { return Unsupported("GroupEnd"); }

 private:
  struct DoneWork : Work {
    void Wait() override {}
    bool Test() override { return true; }
  };
  static WorkHandle Done() { return std::make_unique<DoneWork>(); }
  static WorkHandle Unsupported(const char* what) {
    FULCRUM_CHECK(false, what, " is not in the test communicator");
    return nullptr;
  }
  // 16-bit floats travel as fp32 (MPI has no bf16 sum).
  static torch::Tensor Staged(const torch::Tensor& t) {
    FULCRUM_CHECK(t.is_contiguous(), "communicator tensors must be contiguous");
    if (t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf) {
      return t.to(torch::kFloat);
    }
    return t;
  }
  static int Count(const torch::Tensor& t) { return static_cast<int>(t.numel()); }
  static MPI_Datatype Type(const torch::Tensor& t) {
    switch (t.scalar_type()) {
      case torch::kFloat: return MPI_FLOAT;
      case torch::kDouble: return MPI_DOUBLE;
      case torch::kLong: return MPI_INT64_T;
      default: FULCRUM_CHECK(false, "dtype not in the test communicator"); return MPI_FLOAT;
    }
  }
  static MPI_Op Op(ReduceOp op) {
    return op == ReduceOp::kSum ? MPI_SUM : op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::string name_;
};

}  // namespace fulcrum::parallel::tensor::testing
