// FULCRUM_MPI_CHECK: every MPI call goes through it; a failure names the call.
#pragma once

#include <mpi.h>

#include <string>

#include "core/check.h"

namespace fulcrum::parallel {
inline std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, length);
}
}  // namespace fulcrum::parallel

#define FULCRUM_MPI_CHECK(call)                                                       \
  do {                                                                                \
    int fulcrum_mpi_rc_ = (call);                                                     \
    FULCRUM_CHECK(fulcrum_mpi_rc_ == MPI_SUCCESS, #call,                              \
                  " failed: ", ::fulcrum::parallel::MpiErrorString(fulcrum_mpi_rc_)); \
  } while (0)
