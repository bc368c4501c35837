// Communicators for the data-parallel and optimizer mpi tests.
//
// MakeWorldCommunicator: the MpiCommunicator over MPI_COMM_WORLD.
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
