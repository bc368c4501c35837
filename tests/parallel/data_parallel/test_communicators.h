// Communicators for the data-parallel and optimizer mpi tests.
//
// MakeWorldCommunicator: the MpiCommunicator over MPI_COMM_WORLD.
// RecordingCommunicator: forwards to another communicator and records the
// order of launches (and, when asked, of waits), so a test can see that
// reductions start while backward is still running.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/communicator_factory.h"

namespace fulcrum::parallel::testing {

inline std::unique_ptr<Communicator> MakeWorldCommunicator() {
  CommOptions options;
  options.timeout_seconds = 60.0;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "world", options);
  FULCRUM_CHECK(comm.ok(), comm.status().ToString());
  return std::move(comm).value();
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
  // Also "wait:<op>" when a launched operation is waited on.
  void RecordWaits(bool on) { record_waits_ = on; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const std::string& name() const override { return inner_.name(); }
  const char* backend() const override { return inner_.backend(); }
  WorkHandle AllReduceAsync(torch::Tensor t, ReduceOp op) override {
    Record("all_reduce", t.numel());
    return Recorded("all_reduce", inner_.AllReduceAsync(t, op));
  }
  WorkHandle ReduceScatterAsync(torch::Tensor input, torch::Tensor output, ReduceOp op) override {
    Record("reduce_scatter", input.numel());
    return Recorded("reduce_scatter", inner_.ReduceScatterAsync(input, output, op));
  }
  WorkHandle AllGatherAsync(torch::Tensor input, torch::Tensor output) override {
    Record("all_gather", output.numel());
    return Recorded("all_gather", inner_.AllGatherAsync(input, output));
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
  class RecordedWork : public Work {
   public:
    RecordedWork(WorkHandle inner, std::string mark, std::vector<std::string>& events)
        : inner_(std::move(inner)), mark_(std::move(mark)), events_(events) {}
    void Wait() override {
      if (!waited_) events_.push_back(mark_);
      waited_ = true;
      inner_->Wait();
    }
    bool Test() override { return inner_->Test(); }

   private:
    WorkHandle inner_;
    std::string mark_;
    std::vector<std::string>& events_;
    bool waited_ = false;
  };

  void Record(const char* op, int64_t numel) {
    events_.push_back(std::string("launch:") + op + ":" + std::to_string(numel));
  }
  WorkHandle Recorded(const char* op, WorkHandle work) {
    if (!record_waits_) return work;
    return std::make_unique<RecordedWork>(std::move(work), std::string("wait:") + op, events_);
  }
  Communicator& inner_;
  std::vector<std::string> events_;
  bool record_waits_ = false;
};

}  // namespace fulcrum::parallel::testing
