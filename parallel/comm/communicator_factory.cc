#include "parallel/comm/communicator_factory.h"

#include "absl/strings/str_cat.h"
#include "parallel/comm/mpi_communicator.h"
#ifdef FULCRUM_WITH_NCCL
#include "parallel/comm/nccl_communicator.h"
#endif

namespace fulcrum::parallel {

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(CommBackend backend,
                                                                 MPI_Comm group,
                                                                 const std::string& name,
                                                                 const CommOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return absl::FailedPreconditionError(
        absl::StrCat("communicator '", name, "': MPI is not initialized"));
  }
  if (group == MPI_COMM_NULL) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator '", name, "': the MPI group is MPI_COMM_NULL"));
  }
  if (!(options.timeout_seconds > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("communicator '", name, "': timeout_seconds ",
                                                   options.timeout_seconds, " must be > 0"));
  }
  switch (backend) {
    case CommBackend::kMpi:
      return std::unique_ptr<Communicator>(new MpiCommunicator(group, name, options));
    case CommBackend::kNccl:
#ifdef FULCRUM_WITH_NCCL
      return NcclCommunicator::Create(group, name, options);
#else
      return absl::FailedPreconditionError(
          absl::StrCat("communicator '", name,
                       "': the nccl backend was requested but fulcrum was not built "
                       "with NCCL (configure with NCCL installed, FULCRUM_WITH_NCCL=ON)"));
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("communicator '", name, "': unknown backend"));
}

}  // namespace fulcrum::parallel
