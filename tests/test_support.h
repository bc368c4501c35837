// Helpers shared by tests: paths to the fixtures and the binary, a scratch
// directory per test, running the fulcrum binary (optionally under mpirun).
#pragma once

#include <string>

namespace fulcrum::parallel {
class World;
}  // namespace fulcrum::parallel

namespace fulcrum::testing {

// In a *_mpi_test: the World over the MPI that mpi_test_main started. Never
// destroyed: its destructor would finalize MPI under the test main.
const parallel::World& MpiTestWorld();

// ../shared/fixtures (read-only).
std::string FixturesDir();
// Absolute path of the repository root.
std::string SourceDir();
// Path of the built `fulcrum` binary.
std::string FulcrumBinary();
// A fresh, empty directory under the build tree named after the current test.
std::string ScratchDir();
// Where ScratchDir puts the current test's directory, left as it is.
std::string ScratchDirPath();

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a shell command, capturing its output.
CommandResult RunCommand(const std::string& command);
// Runs `fulcrum ARGS` on `ranks` ranks (1: without mpirun).
CommandResult RunFulcrum(const std::string& args, int ranks = 1);

// build/npm, where scripts/npm_test_deps.sh installs the reference packages
// (only tests named *_reference_test get that set-up).
std::string NpmDir();
// Why the npm packages are missing (registry unreachable, ...), or "" when
// they are installed.
std::string NpmUnavailableReason();
// `node SCRIPT ARGS` with NODE_PATH set to NpmDir()/node_modules.
CommandResult RunNode(const std::string& script_and_args);

// In a *_reference_test: skips the test, printing why, when the npm packages
// could not be installed (the only accepted reason to skip).
#define FULCRUM_REQUIRE_NPM()                                                            \
  do {                                                                                   \
    const std::string npm_reason = ::fulcrum::testing::NpmUnavailableReason();           \
    if (!npm_reason.empty()) GTEST_SKIP() << "npm packages unavailable: " << npm_reason; \
  } while (0)

void WriteFile(const std::string& path, const std::string& text);
std::string ReadFile(const std::string& path);

}  // namespace fulcrum::testing
