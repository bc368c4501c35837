// The mpirun command line used by tests and scripts. The flags that let
// Open MPI run as root and with more ranks than cores live here and nowhere
// else (scripts use scripts/mpirun.sh, which mirrors them).
#pragma once

#include <string>

#include "absl/strings/str_cat.h"

namespace fulcrum::parallel {

inline std::string MpirunCommand(int ranks) {
  return absl::StrCat(
      "mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -np ", ranks);
}

}  // namespace fulcrum::parallel
