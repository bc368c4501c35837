// SilentCommunicator: a group with a given rank and size that must never
// communicate (unit tests of code that should not reach the network, e.g.
// dp = 1, or shard arithmetic of a tp rank). Any collective fails the test.
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "parallel/comm/communicator.h"

namespace fulcrum::testing {

class SilentCommunicator : public parallel::Communicator {
 public:
  SilentCommunicator(int rank, int size, std::string name = "silent")
      : rank_(rank), size_(size), name_(std::move(name)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "silent"; }
  parallel::WorkHandle AllReduceAsync(torch::Tensor, parallel::ReduceOp) override { return Fail(); }
  parallel::WorkHandle ReduceScatterAsync(torch::Tensor, torch::Tensor,
                                          parallel::ReduceOp) override {
    return Fail();
  }
  parallel::WorkHandle AllGatherAsync(torch::Tensor, torch::Tensor) override { return Fail(); }
  parallel::WorkHandle AllGatherVAsync(torch::Tensor, torch::Tensor,
                                       const std::vector<int64_t>&) override {
    return Fail();
  }
  parallel::WorkHandle AllToAllAsync(torch::Tensor, torch::Tensor, const std::vector<int64_t>&,
                                     const std::vector<int64_t>&) override {
    return Fail();
  }
  parallel::WorkHandle BroadcastAsync(torch::Tensor, int) override { return Fail(); }
  parallel::WorkHandle SendAsync(torch::Tensor, int) override { return Fail(); }
  parallel::WorkHandle RecvAsync(torch::Tensor, int) override { return Fail(); }
  void Barrier() override { Fail(); }

 protected:
  void GroupStart() override { Fail(); }
  parallel::WorkHandle GroupEnd() override { return Fail(); }

 private:
  parallel::WorkHandle Fail() {
    ADD_FAILURE() << "unexpected communication on group '" << name_ << "'";
    throw std::runtime_error("SilentCommunicator: unexpected communication");
  }
  int rank_, size_;
  std::string name_;
};

}  // namespace fulcrum::testing
