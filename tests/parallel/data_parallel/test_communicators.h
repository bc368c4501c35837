// Communicators for the data-parallel and optimizer mpi tests.
//
// MakeWorldCommunicator: an MPI communicator over MPI_COMM_WORLD.
// RecordingCommunicator: forwards to another communicator and records the
// order of launches, so a test can see that reductions start while backward
// is still running.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/communicator_factory.h"

namespace fulcrum::parallel::testing {

// A minimal MPI communicator (all-reduce, reduce-scatter, all-gather of
// contiguous CPU tensors; 16-bit floats through fp32 staging) so these tests
// do not depend on the full MpiCommunicator's progress.
class MiniMpiCommunicator : public Communicator {
 public:
  MiniMpiCommunicator() {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MiniMpiCommunicator() override { MPI_Comm_free(&comm_); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "mpi"; }

  WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) override {
    FULCRUM_CHECK(op == ReduceOp::kSum, "only sums");
    auto work = std::make_unique<MiniWork>(t);
    MPI_Iallreduce(MPI_IN_PLACE, work->staged.data_ptr(), static_cast<int>(t.numel()),
                   MpiType(work->staged), MPI_SUM, comm_, &work->request);
    return work;
  }
  WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) override {
    FULCRUM_CHECK(op == ReduceOp::kSum, "only sums");
    FULCRUM_CHECK(input.numel() == output.numel() * size_, "reduce-scatter sizes");
    auto work = std::make_unique<MiniWork>(output);
    work->input = Staged(input);
    MPI_Ireduce_scatter_block(work->input.data_ptr(), work->staged.data_ptr(),
                              static_cast<int>(output.numel()), MpiType(work->staged), MPI_SUM,
                              comm_, &work->request);
    return work;
  }
  WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) override {
    FULCRUM_CHECK(output.numel() == input.numel() * size_, "all-gather sizes");
    auto work = std::make_unique<MiniWork>(output);
    work->input = Staged(input);
    MPI_Iallgather(work->input.data_ptr(), static_cast<int>(input.numel()),
                   MpiType(work->input), work->staged.data_ptr(), static_cast<int>(input.numel()),
                   MpiType(work->staged), comm_, &work->request);
    return work;
  }
  WorkHandle AllGatherVAsync(torch::Tensor, torch::Tensor, const std::vector<int64_t>&) override {
    return Unsupported();
  }
  WorkHandle AllToAllAsync(torch::Tensor, torch::Tensor, const std::vector<int64_t>&,
                           const std::vector<int64_t>&) override {
    return Unsupported();
  }
  WorkHandle BroadcastAsync(torch::Tensor, int) override { return Unsupported(); }
  WorkHandle SendAsync(torch::Tensor, int) override { return Unsupported(); }
  WorkHandle RecvAsync(torch::Tensor, int) override { return Unsupported(); }
  void Barrier() override { MPI_Barrier(comm_); }

 protected:
  void GroupStart() override { Unsupported(); }
  WorkHandle GroupEnd() override { return Unsupported(); }

 private:
  // fp32/fp64 tensors are used in place; 16-bit ones through an fp32 copy.
  static torch::Tensor Staged(const torch::Tensor& t) {
    FULCRUM_CHECK(t.is_contiguous(), "tensor must be contiguous");
    if (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble) return t;
    return t.to(torch::kFloat);
  }
  static MPI_Datatype MpiType(const torch::Tensor& t) {
    return t.scalar_type() == torch::kDouble ? MPI_DOUBLE : MPI_FLOAT;
  }
  static WorkHandle Unsupported() {
    FULCRUM_CHECK(false, "not supported by the test communicator");
    return nullptr;
  }
  struct MiniWork : Work {
    explicit MiniWork(torch::Tensor out) : output(out), staged(Staged(out)) {}
    ~MiniWork() override { Wait(); }
    void Wait() override {
      if (done) return;
      MPI_Wait(&request, MPI_STATUS_IGNORE);
      Finish();
    }
    bool Test() override {
      if (done) return true;
      int flag = 0;
      MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
      if (flag) Finish();
      return done;
    }
    void Finish() {
      done = true;
      if (staged.data_ptr() != output.data_ptr()) output.copy_(staged);
    }
    torch::Tensor output;
    torch::Tensor staged;  // output, or its fp32 copy
    torch::Tensor input;   // kept alive until done
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = false;
  };

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::string name_ = "world";
};

inline std::unique_ptr<Communicator> MakeWorldCommunicator() {
#ifdef FULCRUM_DP_TEST_MINI_COMM
  return std::make_unique<MiniMpiCommunicator>();
#else
  CommOptions options;
  options.timeout_seconds = 60.0;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "world", options);
  FULCRUM_CHECK(comm.ok(), comm.status().ToString());
  return std::move(comm).value();
#endif
}

inline int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

inline int WorldSize() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

class RecordingCommunicator : public Communicator {
 public:
  explicit RecordingCommunicator(Communicator& inner) : inner_(inner) {}

  // "launch:<op>:<numel>" per launch; tests add their own marks.
  std::vector<std::string>& events() { return events_; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const std::string& name() const override { return inner_.name(); }
  const char* backend() const override { return inner_.backend(); }
  WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) override {
    Record("all_reduce", t.numel());
    return inner_.AllReduceAsync(t, op);
  }
  WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) override {
    Record("reduce_scatter", input.numel());
    return inner_.ReduceScatterAsync(input, output, op);
  }
  WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) override {
    Record("all_gather", output.numel());
    return inner_.AllGatherAsync(input, output);
  }
  WorkHandle AllGatherVAsync(torch::Tensor input, torch::Tensor output,
                             const std::vector<int64_t>& counts) override {
    Record("all_gather_v", output.numel());
    return inner_.AllGatherVAsync(input, output, counts);
  }
  WorkHandle AllToAllAsync(torch::Tensor input, torch::Tensor output,
                           const std::vector<int64_t>& output_splits,
                           const std::vector<int64_t>& input_splits) override {
    Record("all_to_all", input.numel());
    return inner_.AllToAllAsync(input, output, output_splits, input_splits);
  }
  WorkHandle BroadcastAsync(torch::Tensor t, int root) override {
    Record("broadcast", t.numel());
    return inner_.BroadcastAsync(t, root);
  }
  WorkHandle SendAsync(torch::Tensor t, int peer) override { return inner_.SendAsync(t, peer); }
  WorkHandle RecvAsync(torch::Tensor t, int peer) override { return inner_.RecvAsync(t, peer); }
  void Barrier() override { inner_.Barrier(); }

 protected:
  void GroupStart() override { FULCRUM_CHECK(false, "p2p groups are not recorded"); }
  WorkHandle GroupEnd() override {
    FULCRUM_CHECK(false, "p2p groups are not recorded");
    return nullptr;
  }

 private:
  void Record(const char* op, int64_t numel) {
    events_.push_back(std::string("launch:") + op + ":" + std::to_string(numel));
  }
  Communicator& inner_;
  std::vector<std::string> events_;
};

}  // namespace fulcrum::parallel::testing
