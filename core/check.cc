#include "core/check.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace fulcrum::internal {

void CheckFailed(const char* file, int line, const char* condition, const std::string& message) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  int rank = 0;
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "[fulcrum r%d] FATAL %s:%d: check failed: %s%s%s\n", rank, file, line,
               condition, message.empty() ? "" : ": ", message.c_str());
  std::fflush(stderr);
  // A bug on one rank must not leave the others waiting in a collective.
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 134);
  std::abort();
}

}  // namespace fulcrum::internal
