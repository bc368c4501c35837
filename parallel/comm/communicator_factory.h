// Creating a Communicator for a set of ranks.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"

namespace fulcrum::parallel {

enum class CommBackend {
  kMpi,   // CPU tensors
  kNccl,  // CUDA tensors; the NCCL unique id is broadcast over the MPI group
};

// Collective over the ranks of `group` (every one of them calls it). The
// communicator duplicates `group`, so the caller may free its handle.
// kNccl without FULCRUM_WITH_NCCL -> FailedPrecondition "not built with NCCL".
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(CommBackend backend,
                                                                 MPI_Comm group,
                                                                 const std::string& name,
                                                                 const CommOptions& options);

}  // namespace fulcrum::parallel
