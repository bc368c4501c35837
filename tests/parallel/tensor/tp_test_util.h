// Helpers of the tensor-parallel mpi tests: the world communicator and
// closed forms of the rank.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

#include "parallel/comm/communicator_factory.h"

namespace fulcrum::parallel::tensor::testing {

// A communicator over MPI_COMM_WORLD (or MPI_COMM_SELF for a one-rank group);
// a short timeout turns a mismatched collective into a failure, not a hang.
inline std::unique_ptr<Communicator> MakeGroup(MPI_Comm comm, const std::string& name) {
  CommOptions options;
  options.timeout_seconds = 60;
  auto group = CreateCommunicator(CommBackend::kMpi, comm, name, options);
  EXPECT_TRUE(group.ok()) << group.status();
  return group.ok() ? std::move(*group) : nullptr;
}

// sum over r of (r + 1) = s (s + 1) / 2
inline double SumOfRankPlusOne(int size) { return size * (size + 1) / 2.0; }

// max |a - b| (0 when both are empty); shapes must match.
inline double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  if (a.numel() == 0) return 0;
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace fulcrum::parallel::tensor::testing
